"""The rabbittask rows, through its public API only (see bench/README.md for what they expect).

`available()` says why they cannot run (rabbittask not importable yet); the raw rows run regardless.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bench import drain
from bench.broker import ReadyWatcher
from bench.procs import ChildFailed, spawn, stop
from bench.row import Measurement, RowContext, percentile

if TYPE_CHECKING:
    from bench.tasks import BenchApp
    from rabbittask import App

WARMUP_CALLS = 20


def available() -> str | None:
    """None when the rabbittask rows can run, else the reason they cannot."""
    try:
        import bench.tasks  # noqa: F401  (imports rabbittask and builds an app)
    except Exception as e:  # any import-time failure of a package under construction
        return f"{type(e).__name__}: {e}"
    return None


def setup(ctx: RowContext, history: bool = False, *, wide: bool = False) -> BenchApp:
    """Build the row's app on a namespaced exchange, note what it declares for deletion, declare it."""
    from bench.tasks import build

    bench = build(ctx.queue, ctx.queue_type, exchange=f"{ctx.queue}.x", wide=wide)
    for decl in bench.app.declarations():
        is_exchange = type(decl).__name__ == "ExchangeDecl"
        if hasattr(decl, "name"):
            (ctx.delete_exchanges if is_exchange else ctx.delete_queues).append(decl.name)
    ctx.delete_exchanges.append(f"{ctx.queue}.x.events")  # declared by the worker when it sends events
    ctx.delete_queues.append(f"{ctx.queue}.x.history")  # the history stream, declared by the worker too
    bench.app.declare()
    if history:  # bound to the events exchange: only where the worker keeps history
        declare_history(bench.app)
    return bench


def declare_history(app: App) -> None:
    """Create the history stream before the drain, as it exists on a broker that ran workers before.

    Creating a stream takes the broker a moment (its coordinator, a Ra log shared with quorum
    queues): a worker does it once at start, and it is no part of what history costs per task.
    """
    from rabbittask.amqp.link import Link
    from rabbittask.history import stream

    async def declare() -> None:
        async with Link(app.settings, "bench history") as connection:
            problem = await stream.declare(connection.channel, app.settings)
            assert problem is None, problem

    asyncio.run(declare())


def worker(ctx: RowContext, concurrency: int, prefetch: int | None = None, *, all_queues: bool = False) -> list[str]:
    """The worker command; with no `prefetch`, the default (adaptive) prefetch, as a user would run it."""
    script = Path(sys.executable).with_name("rabbittask")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "rabbittask"]
    queues = [] if all_queues else ["-Q", ctx.queue]
    args = ["worker", "-A", "bench.tasks:app", *queues, "-c", str(concurrency)]
    return [*base, *args, *(["--prefetch", str(prefetch)] if prefetch else [])]


def worker_env(ctx: RowContext, events: bool = True, history: bool = True) -> dict[str, str]:
    env = {"BENCH_QUEUE": ctx.queue, "BENCH_QUEUE_TYPE": ctx.queue_type, "BENCH_EXCHANGE": f"{ctx.queue}.x"}
    if not events:
        env["RABBITTASK_EVENTS"] = "false"
    env["RABBITTASK_HISTORY"] = "true" if history else "false"
    return env


def a1_delay(ctx: RowContext) -> Measurement:
    """`noop.delay(i)` in a loop: each returns after the broker's confirm."""
    bench = setup(ctx)
    watcher = ReadyWatcher(ctx.url, ctx.queue)
    try:
        bench.noop.delay(-1)  # warm-up: opens the publishing connection
        started = time.perf_counter()
        for i in range(ctx.n):
            bench.noop.delay(i)
        watcher.wait(ctx.n + 1)
        return Measurement(ctx.n / (time.perf_counter() - started))
    finally:
        watcher.close()
        bench.app.close()


def a2_batch(ctx: RowContext) -> Measurement:
    """`with app.batch(): noop.delay(i)`: confirms pipelined, all confirmed when the block ends."""
    bench = setup(ctx)
    watcher = ReadyWatcher(ctx.url, ctx.queue)
    try:
        bench.noop.delay(-1)
        started = time.perf_counter()
        with bench.app.batch():
            for i in range(ctx.n):
                bench.noop.delay(i)
        watcher.wait(ctx.n + 1)
        return Measurement(ctx.n / (time.perf_counter() - started))
    finally:
        watcher.close()
        bench.app.close()


def drain_with(
    concurrency: int, events: bool = True, history: bool = True, prefetch: int | None = None, loop: str = "asyncio"
) -> Callable[[RowContext], Measurement]:
    """The drain row; `events=False` runs the worker with `RABBITTASK_EVENTS=false` (what events cost),
    `history=False` with `RABBITTASK_HISTORY=false` (what keeping them in the history stream costs),
    `loop="uvloop"` with `--loop uvloop`."""

    def row(ctx: RowContext) -> Measurement:
        bench = setup(ctx, history=events and history)
        watcher = ReadyWatcher(ctx.url, ctx.queue)
        try:
            with bench.app.batch():
                for i in range(ctx.n):
                    bench.noop.delay(i)
            watcher.wait(ctx.n)
        finally:
            watcher.close()
            bench.app.close()
        env = {**worker_env(ctx, events, history), "RABBITTASK_WORKER_LOOP": loop}
        procs = [spawn(worker(ctx, concurrency, prefetch), ctx.workdir, "worker", env)]
        result = drain.measure(ctx.url, ctx.queue, ctx.n, ctx.workdir, procs, barrier=False)
        return Measurement(result.rate, memory=result.memory, leftover=result.leftover)

    flags = (f" --prefetch {prefetch}" if prefetch else "") + (f" --loop {loop}" if loop != "asyncio" else "")
    off = ", events off" if not events else ", history off" if not history else ""
    row.__doc__ = f"`rabbittask worker -c {concurrency}{flags}{off}` drains pre-queued no-op tasks"
    return row


def wait_for_worker(bench: BenchApp, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    """Call until the worker answers (its start-up is not measured); fail at once if it exited."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise ChildFailed(f"worker exited with {proc.returncode} before answering a call")
        try:
            bench.echo.call(-1, timeout=2)
            return
        except Exception:  # whatever .call raises on a timeout; give up only at the deadline
            if time.monotonic() > deadline:
                raise


def call(ctx: RowContext) -> Measurement:
    """`echo.call(i, timeout=10)`, sequential, against a `-c 1` worker."""
    bench = setup(ctx)
    proc = spawn(worker(ctx, 1), ctx.workdir, "worker", worker_env(ctx))
    try:
        wait_for_worker(bench, proc)
        latencies_ms: list[float] = []
        for i in range(WARMUP_CALLS + ctx.n):
            started = time.perf_counter()
            bench.echo.call(i, timeout=10)
            if i >= WARMUP_CALLS:
                latencies_ms.append((time.perf_counter() - started) * 1000)
    finally:
        stop([proc])
        bench.app.close()
    return Measurement(percentile(latencies_ms, 50), p99_ms=percentile(latencies_ms, 99))


def acall(ctx: RowContext) -> Measurement:
    """`await echo.acall(i, timeout=10)`, sequential, against a `-c 1` worker."""
    bench = setup(ctx)
    proc = spawn(worker(ctx, 1), ctx.workdir, "worker", worker_env(ctx))

    async def calls() -> list[float]:
        latencies_ms: list[float] = []
        for i in range(WARMUP_CALLS + ctx.n):
            started = time.perf_counter()
            await bench.echo.acall(i, timeout=10)
            if i >= WARMUP_CALLS:
                latencies_ms.append((time.perf_counter() - started) * 1000)
        return latencies_ms

    try:
        wait_for_worker(bench, proc)
        latencies_ms = asyncio.run(calls())
    finally:
        stop([proc])
        bench.app.close()
    return Measurement(percentile(latencies_ms, 50), p99_ms=percentile(latencies_ms, 99))
