"""Test app for the control plane: its own exchange (so broadcasts reach only this test's workers), a ledger.

The queue and exchange names come from RT_TEST_PREFIX; each task appends `<event> <tag> pid=<pid>` to
`RT_TEST_LEDGER/<prefix>` with one `write` (O_APPEND).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from rabbittask import App, TaskContext

PREFIX = os.environ.get("RT_TEST_PREFIX", "ctl")
LEDGER = Path(os.environ.get("RT_TEST_LEDGER", "/tmp/rt-ledger")) / PREFIX

app = App("control-tests", exchange=PREFIX, events_heartbeat_s=0.5, terminate_grace_s=1.0)


def note(event: str, tag: str) -> None:
    fd = os.open(LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{event} {tag} pid={os.getpid()}\n".encode())
    finally:
        os.close(fd)


@app.task(queue=f"{PREFIX}.main", name="ctl.record")
def record(tag: str, sleep_s: float = 0.0) -> None:
    note("start", tag)
    time.sleep(sleep_s)
    note("done", tag)


@app.task(queue=f"{PREFIX}.main", name="ctl.checking", bind=True)
def checking(ctx: TaskContext, tag: str, steps: int = 200) -> None:
    """Long work in steps, checking for a terminate between them."""
    note("start", tag)
    for _ in range(steps):
        ctx.check_revoked()
        time.sleep(0.05)
    note("done", tag)


@app.task(queue=f"{PREFIX}.main", name="ctl.async_sleep")
async def async_sleep(tag: str, sleep_s: float = 10.0) -> None:
    note("start", tag)
    try:
        await asyncio.sleep(sleep_s)
    except asyncio.CancelledError:
        note("cancelled", tag)
        raise
    note("done", tag)


@app.task(queue=f"{PREFIX}.limited", name="ctl.limited", rate_limit=os.environ.get("RT_TEST_RATE", "20/s"))
async def limited(i: int) -> None:
    """Note when it started: the rate tests count starts in windows."""
    note(f"run {time.time():.4f}", str(i))
