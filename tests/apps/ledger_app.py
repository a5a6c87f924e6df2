"""The fault suite's app: every run of `work` is written to a per-process ledger file.

RT_LEDGER_DIR holds one `<pid>.jsonl` per worker process; RT_TEST_PREFIX names the queue. A run
writes a `start` record (with the delivery's redelivered flag and count) and, if it gets there, an
`end` record.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

from rabbittask import App, TaskContext

PREFIX = os.environ.get("RT_TEST_PREFIX", "ledger")
TIME_LIMIT_S = float(os.environ.get("RT_TIME_LIMIT_S", "0")) or None  # of `work`; the consumer_timeout scenario sets it
app = App("ledger")
_ledger = None


def _write(record: dict[str, object]) -> None:
    global _ledger
    if _ledger is None:
        directory = os.environ.get("RT_LEDGER_DIR", "/tmp/rt-ledger")
        os.makedirs(directory, exist_ok=True)
        _ledger = open(os.path.join(directory, f"{os.getpid()}.jsonl"), "a", buffering=1)  # noqa: SIM115
    _ledger.write(json.dumps(record) + "\n")


def _start(ctx: TaskContext, key: str) -> None:
    _write(
        {
            "key": key,
            "pid": os.getpid(),
            "event": "start",
            "t": time.time(),
            "redelivered": ctx.redelivered,
            "resent": ctx.resent,
            "count": ctx.delivery_count,
        }
    )


@app.task(queue=f"{PREFIX}.work", name="ledger.work", bind=True, time_limit=TIME_LIMIT_S)
def work(ctx: TaskContext, key: str, sleep_s: float = 0.0, cpu_s: float = 0.0) -> str:
    """Sleeps `sleep_s`, then keeps a CPU busy for `cpu_s` (in pure Python, holding the GIL)."""
    _start(ctx, key)
    if sleep_s:
        time.sleep(sleep_s)
    if cpu_s:
        until = time.perf_counter() + cpu_s
        while time.perf_counter() < until:
            sum(i * i for i in range(1000))
    _write({"key": key, "pid": os.getpid(), "event": "end", "t": time.time()})
    return key


@app.task(queue=f"{PREFIX}.work", name="ledger.once", bind=True, dedupe_s=60)
def once(ctx: TaskContext, key: str) -> str:
    """Like `work`, run at most once per id and attempt within a minute (`dedupe_s`)."""
    _start(ctx, key)
    _write({"key": key, "pid": os.getpid(), "event": "end", "t": time.time()})
    return key


@app.task(queue=f"{PREFIX}.work", name="ledger.crash", bind=True)
def crash(ctx: TaskContext, key: str) -> None:
    """Kills the child running it (SIGKILL) every time: a poison message."""
    _start(ctx, key)
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(queue=f"{PREFIX}.rpc", name="ledger.echo")
async def echo(key: str, sleep_s: float = 0.0) -> str:
    """Answers `.call()`s from the child's event loop."""
    if sleep_s:
        await asyncio.sleep(sleep_s)
    return key


@app.task(queue=f"{PREFIX}.work", name="ledger.canary")
def canary(path: str) -> None:
    with open(path, "w") as f:
        f.write("the canary task ran")


@app.task(queue=f"{PREFIX}.work", name="ledger.flaky", bind=True, max_retries=3)
def flaky(ctx: TaskContext, key: str, delay_s: float) -> str:
    """Fails three times, each retry `delay_s` later; the ledger notes every attempt and its start."""
    _write({"key": key, "pid": os.getpid(), "event": f"attempt{ctx.attempt}", "t": time.time()})
    if ctx.attempt <= 3:
        raise ctx.retry(countdown=delay_s)
    _write({"key": key, "pid": os.getpid(), "event": "end", "t": time.time()})
    return key


# The soak's workloads (bench/soak_work.py, bench/soak_beat.py): retries, workflows, a rate limit, beat ticks.
RATE_LIMIT = os.environ.get("RT_SOAK_RATE", "20/s")


@app.task(queue=f"{PREFIX}.work", name="ledger.retry", bind=True, max_retries=2, retry_backoff=False)
def retry(ctx: TaskContext, key: str, fail_times: int, delay_s: float) -> str:
    """Fails `fail_times` attempts, each retried `delay_s` later through the ladder; more than 2 exhaust the
    retries (dead-lettered). Only the attempt that succeeds writes `start`/`end`; each one writes `attempt`."""
    _write({"key": key, "pid": os.getpid(), "event": "attempt", "attempt": ctx.attempt, "t": time.time(),
            "redelivered": ctx.redelivered, "resent": ctx.resent})  # fmt: skip
    if ctx.attempt <= fail_times:
        raise ctx.retry(countdown=delay_s)
    _start(ctx, key)
    _write({"key": key, "pid": os.getpid(), "event": "end", "t": time.time()})
    return key


if os.environ.get("RT_SOAK"):  # the soak's rate-limited task, on a queue of its own (not in the fault suite's apps)

    @app.task(queue=f"{PREFIX}.limited", name="ledger.limited", bind=True, rate_limit=RATE_LIMIT)
    def limited(ctx: TaskContext, key: str) -> str:
        """`work` under a rate limit across all workers (its own queue: waiting runs hold no slot of `work`)."""
        _start(ctx, key)
        _write({"key": key, "pid": os.getpid(), "event": "end", "t": time.time()})
        return key


@app.task(queue=f"{PREFIX}.work", name="ledger.member")
def member(i: int) -> int:
    return i


@app.task(queue=f"{PREFIX}.work", name="ledger.collect", bind=True)
def collect(ctx: TaskContext, results: list[int], tag: str) -> int:
    """A workflow's last step (a chord's callback, a chain's end): one `workflow` record per run."""
    _write({"key": tag, "pid": os.getpid(), "event": "workflow", "results": results, "t": time.time(),
            "redelivered": ctx.redelivered, "resent": ctx.resent})  # fmt: skip
    return len(results)


@app.task(queue=f"{PREFIX}.work", name="ledger.append", bind=True)
def append(ctx: TaskContext, results: list[int], i: int, tag: str = "") -> list[int]:
    """A chain's step: a `step` record per run (a redelivered step sends its next step again)."""
    _write({"key": tag, "pid": os.getpid(), "event": "step", "t": time.time(), "redelivered": ctx.redelivered,
            "resent": ctx.resent})  # fmt: skip
    return [*results, i]


@app.task(queue=f"{PREFIX}.work", name="ledger.tick", bind=True)
def tick(ctx: TaskContext) -> None:
    """A beat tick: its id is `<entry>@<slot>`."""
    _write({"key": ctx.id, "pid": os.getpid(), "event": "tick", "t": time.time(), "redelivered": ctx.redelivered})


if os.environ.get("RT_SOAK_BEAT"):
    app.schedule("soak-tick", tick.s(), every=1, catch_up="all")
