"""Test app for the supervisor: queues from RT_TEST_PREFIX, a ledger line per task start and end.

The ledger is `RT_TEST_LEDGER/<prefix>`; each line is `<event> <tag> pid=<pid>`, appended with one
`write` (O_APPEND), so lines from several children never interleave.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

from rabbittask import App, SoftTimeLimitExceeded

PREFIX = os.environ.get("RT_TEST_PREFIX", "sup")
LEDGER = Path(os.environ.get("RT_TEST_LEDGER", "/tmp/rt-ledger")) / PREFIX
_leaked: list[bytearray] = []

app = App("supervisor-tests")


def note(event: str, tag: str) -> None:
    fd = os.open(LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{event} {tag} pid={os.getpid()}\n".encode())
    finally:
        os.close(fd)


@app.task(queue=f"{PREFIX}.main", name="sup.record")
def record(tag: str, sleep_s: float = 0.0) -> None:
    note("start", tag)
    time.sleep(sleep_s)
    note("done", tag)


@app.task(queue=f"{PREFIX}.main", name="sup.where")
def where(tag: str, sleep_s: float = 0.0) -> None:
    """Note the thread it ran on; `asyncio.run()` must work in it, as in a worker thread."""
    asyncio.run(asyncio.sleep(0))
    time.sleep(sleep_s)
    note(f"on-{threading.current_thread().name}", tag)


@app.task(queue=f"{PREFIX}.main", name="sup.leak")
def leak(tag: str, mb: int = 50) -> None:
    """Keep `mb` MB alive for the rest of the process (written, so the pages are resident)."""
    _leaked.append(bytearray(b"\x01") * (mb * 2**20))
    note("done", tag)


@app.task(queue=f"{PREFIX}.main", name="sup.stuck", time_limit=1.0)
def stuck(tag: str) -> None:
    """Never returns on its own: only the hard time limit ends it."""
    note("start", tag)
    while True:
        time.sleep(0.05)


@app.task(queue=f"{PREFIX}.main", name="sup.soft", soft_time_limit=0.5, time_limit=10.0)
def soft(tag: str) -> str:
    """Catches its soft limit and cleans up."""
    note("start", tag)
    try:
        for _ in range(200):
            time.sleep(0.05)
    except SoftTimeLimitExceeded:
        note("soft", tag)
        return "cleaned up"
    note("done", tag)
    return "finished"


@app.task(queue=f"{PREFIX}.main", name="sup.asleep", time_limit=0.5)
async def asleep(tag: str, sleep_s: float = 10.0) -> None:
    note("start", tag)
    await asyncio.sleep(sleep_s)
    note("done", tag)
