"""Start-up rows: from starting a process to the broker seeing its consumer, rabbittask worker against raw aiormq.

The clock starts just before the process is spawned (Python start-up and imports count, as they do for
a deploy) and stops when a passive `queue.declare` on the row's queue reports a consumer. The queue and
the app's topology exist already (a restart after a deploy, not the first start ever). `S2` starts a
worker of an app with 200 tasks on 50 queues, consuming all of them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from bench import broker, raw, rt
from bench.procs import ChildFailed, python_module, spawn, stop
from bench.row import Measurement, RowContext

TIMEOUT_S = 60.0


async def _wait_consumer(url: str, queue: str, proc_poll: Callable[[], int | None]) -> float:
    async with broker.channel(url) as ch:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            ok = await ch.queue_declare(queue, passive=True)
            if ok.consumer_count:
                return time.perf_counter()
            if proc_poll() is not None:
                raise ChildFailed("the process exited before it consumed")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no consumer on {queue} after {TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.005)


def _time_to_consume(
    ctx: RowContext, cmd: list[str], name: str, env: dict[str, str] | None = None, last_queue: str = ""
) -> Measurement:
    started = time.perf_counter()
    proc = spawn(cmd, ctx.workdir, name, env)
    try:
        consuming = asyncio.run(_wait_consumer(ctx.url, last_queue or ctx.queue, proc.poll))
    finally:
        stop([proc])
    return Measurement(consuming - started)


def raw_aiormq(ctx: RowContext) -> Measurement:
    """A raw aiormq consumer process: import, connect, qos, consume."""
    raw.declare(ctx)
    return _time_to_consume(ctx, python_module("bench.raw_child", "consume", ctx.queue), "raw")


def rabbittask_worker(ctx: RowContext) -> Measurement:
    """`rabbittask worker -c 1` of the bench app, its topology declared before (as after a deploy)."""
    rt.setup(ctx).app.close()
    return _time_to_consume(ctx, rt.worker(ctx, 1), "worker", rt.worker_env(ctx))


def rabbittask_wide(ctx: RowContext) -> Measurement:
    """`rabbittask worker -c 1` of an app with 200 tasks on 50 queues (the row's queue is one of them)."""
    from bench.tasks import WIDE_ENV, wide_queues

    rt.setup(ctx, wide=True).app.close()
    env = {**rt.worker_env(ctx), WIDE_ENV: "1"}
    last = wide_queues(ctx.queue)[-1]  # consumed last: the worker consumes all 50 when it has a consumer
    return _time_to_consume(ctx, rt.worker(ctx, 1, all_queues=True), "worker", env, last_queue=last)
