"""Case D: draining pre-queued Celery protocol 2 messages (JSON): a rabbittask worker on a Celery queue,
beside the same worker on its own format, and beside a Celery worker on the same messages.

The Celery messages are published by rabbittask's `celery=True` sends in a batch (the format a real
Celery producer writes: tests/unit/test_celery_protocol.py). Both workers run one process, prefetch
1000, late acks; the Celery worker uses the solo pool (one process, as `rabbittask worker -c 1`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench import drain
from bench.broker import ReadyWatcher
from bench.procs import spawn
from bench.row import Measurement, RowContext


def _fill(ctx: RowContext) -> None:
    from bench.celery_tasks import build

    app, noop = build(ctx.queue)
    ctx.delete_queues += [ctx.queue, f"{ctx.queue}.dlq"]
    ctx.delete_exchanges += [ctx.queue]
    app.declare()
    watcher = ReadyWatcher(ctx.url, ctx.queue)
    try:
        with app.batch():
            for i in range(ctx.n):
                noop.delay(i)
        watcher.wait(ctx.n)
    finally:
        watcher.close()
        app.close()


def rabbittask_on_celery(ctx: RowContext) -> Measurement:
    """`rabbittask worker -c 1 --prefetch 1000` (accept_celery) drains pre-queued Celery messages."""
    _fill(ctx)
    script = Path(sys.executable).with_name("rabbittask")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "rabbittask"]
    cmd = [*base, "worker", "-A", "bench.celery_tasks:app", "-Q", ctx.queue, "-c", "1", "--prefetch", "1000"]
    procs = [spawn(cmd, ctx.workdir, "worker", {"BENCH_QUEUE": ctx.queue})]
    result = drain.measure(ctx.url, ctx.queue, ctx.n, ctx.workdir, procs, barrier=False)
    return Measurement(result.rate, memory=result.memory, leftover=result.leftover)


def celery_worker(ctx: RowContext) -> Measurement:
    """`celery worker -P solo` (prefetch 1000, late acks) drains the same pre-queued Celery messages."""
    _fill(ctx)
    cmd = [sys.executable, "-m", "celery", "-A", "bench.celery_tasks:celery", "worker", "-P", "solo", "-Q", ctx.queue,
           "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "warning"]  # fmt: skip
    procs = [spawn(cmd, ctx.workdir, "celery", {"BENCH_QUEUE": ctx.queue, "BENCH_CELERY": "1"})]
    result = drain.measure(ctx.url, ctx.queue, ctx.n, ctx.workdir, procs, barrier=False)
    return Measurement(result.rate, memory=result.memory, leftover=result.leftover)
