"""The fault suite's app: every run of `work` is written to a per-process ledger file.

RT_LEDGER_DIR holds one `<pid>.jsonl` per worker process; RT_TEST_PREFIX names the queue.
"""

from __future__ import annotations

import json
import os
import time

from rabbittask import App, TaskContext

PREFIX = os.environ.get("RT_TEST_PREFIX", "ledger")
app = App("ledger")
_ledger = None


def _write(record: dict[str, object]) -> None:
    global _ledger
    if _ledger is None:
        directory = os.environ.get("RT_LEDGER_DIR", "/tmp/rt-ledger")
        os.makedirs(directory, exist_ok=True)
        _ledger = open(os.path.join(directory, f"{os.getpid()}.jsonl"), "a", buffering=1)  # noqa: SIM115
    _ledger.write(json.dumps(record) + "\n")


@app.task(queue=f"{PREFIX}.work", name="ledger.work")
def work(key: str, sleep_s: float = 0.0) -> str:
    start = time.time()
    _write({"key": key, "pid": os.getpid(), "event": "start", "t": start})
    if sleep_s:
        time.sleep(sleep_s)
    _write({"key": key, "pid": os.getpid(), "event": "end", "t": time.time()})
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
