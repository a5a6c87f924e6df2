"""Test app for the core path; queue names come from RT_TEST_PREFIX so tests stay isolated."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from rabbittask import App, Reject


def make_app(prefix: str, broker_url: str | None = None) -> App:
    """Build the app; the test process and the worker subprocess build the same one."""
    app = App("core-tests", broker_url=broker_url)
    ledger = Path(os.environ.get("RT_TEST_LEDGER", "/tmp/rt-ledger")) / prefix

    def note(line: str) -> None:
        ledger.parent.mkdir(parents=True, exist_ok=True)
        with open(ledger, "a") as f:
            f.write(line + "\n")

    @app.task(queue=f"{prefix}.main", name="core.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(queue=f"{prefix}.aio", name="core.amul")
    async def amul(x: int, y: int) -> int:
        await asyncio.sleep(0)
        return x * y

    @app.task(queue=f"{prefix}.aio", name="core.arecord")
    async def arecord(tag: str, sleep_s: float = 0.0) -> str:
        note(f"start {tag} pid={os.getpid()}")
        await asyncio.sleep(sleep_s)
        note(f"done {tag}")
        return tag

    @app.task(queue=f"{prefix}.aio", name="core.aloop")
    async def aloop() -> None:
        note(f"loop {type(asyncio.get_running_loop()).__module__}")

    @app.task(queue=f"{prefix}.main", name="core.record")
    def record(tag: str, sleep_s: float = 0.0) -> str:
        note(f"start {tag} pid={os.getpid()}")
        time.sleep(sleep_s)
        note(f"done {tag}")
        return tag

    @app.task(queue=f"{prefix}.main", name="core.boom")
    def boom(why: str) -> None:
        raise ValueError(f"boom: {why}")

    @app.task(queue=f"{prefix}.main", name="core.reject")
    def reject(why: str) -> None:
        raise Reject(why)

    return app


app = make_app(os.environ.get("RT_TEST_PREFIX", "core"))
