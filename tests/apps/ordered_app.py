"""Test app for partitioned queues: every run is written to a per-process ledger with its key and sequence number.

RT_TEST_PREFIX names the queues, RT_TEST_LEDGER the directory of the `<pid>.jsonl` files, RT_PARTITIONS the
number of partitions of the ordered queue (8), RT_SLEEP_S how long each run of `apply` sleeps (0).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import IO

from rabbittask import App, TaskContext

PREFIX = os.environ.get("RT_TEST_PREFIX", "ordered")
PARTITIONS = int(os.environ.get("RT_PARTITIONS", "8"))
SLEEP_S = float(os.environ.get("RT_SLEEP_S", "0"))
app = App("ordered")
_ledger: IO[str] | None = None


def note(**record: object) -> None:
    """Append one JSON line to this process's ledger file (line-buffered: a kill -9 loses no finished line)."""
    global _ledger
    if _ledger is None:
        directory = Path(os.environ.get("RT_TEST_LEDGER", "/tmp/rt-ledger")) / PREFIX
        directory.mkdir(parents=True, exist_ok=True)
        _ledger = open(directory / f"{os.getpid()}.jsonl", "a", buffering=1)  # noqa: SIM115
    _ledger.write(json.dumps({**record, "pid": os.getpid(), "t": time.time()}) + "\n")


@app.task(queue=f"{PREFIX}.orders", name="ordered.apply", partition_by="key", partitions=PARTITIONS, bind=True)
def apply(ctx: TaskContext, key: str, seq: int) -> None:
    """One event of `key`, number `seq`: the ledger must show each key's numbers in order."""
    note(event="run", key=key, seq=seq, attempt=ctx.attempt, redelivered=ctx.redelivered)
    if SLEEP_S:
        time.sleep(SLEEP_S)


@app.task(
    queue=f"{PREFIX}.orders",
    name="ordered.flaky",
    partition_by="key",
    partitions=PARTITIONS,
    bind=True,
    max_retries=5,
)
def flaky(ctx: TaskContext, key: str, seq: int, fail_times: int, countdown_s: float) -> None:
    """Fails its first `fail_times` attempts, each retried `countdown_s` later."""
    note(event="run", key=key, seq=seq, attempt=ctx.attempt, redelivered=ctx.redelivered)
    if ctx.attempt <= fail_times:
        raise ctx.retry(countdown=countdown_s)


@app.task(
    queue=f"{PREFIX}.skipping",
    name="ordered.skipping",
    partition_by="key",
    partitions=2,
    partition_retry="skip",
    bind=True,
    max_retries=5,
)
def skipping(ctx: TaskContext, key: str, seq: int, fail_times: int, countdown_s: float) -> None:
    """Like `flaky`, on a queue whose retries go behind the later tasks of their key."""
    note(event="run", key=key, seq=seq, attempt=ctx.attempt, redelivered=ctx.redelivered)
    if ctx.attempt <= fail_times:
        raise ctx.retry(countdown=countdown_s)


@app.task(queue=f"{PREFIX}.reports", name="ordered.report", fair_by="tenant", partitions=4)
def report(tenant: str, n: int) -> None:
    """A tenant's report: the ledger shows when it ran."""
    note(event="report", key=tenant, seq=n)
    if SLEEP_S:
        time.sleep(SLEEP_S)
