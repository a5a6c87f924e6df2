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
