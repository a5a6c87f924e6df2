"""Test app for the task history: on an exchange of its own, so its history stream is the test's alone."""

from __future__ import annotations

import os
import time
from pathlib import Path

from rabbittask import App, TaskContext


def make_app(prefix: str, broker_url: str | None = None) -> App:
    """Build the app; the test process, the worker, the dashboard and `rabbittask events` build the same one."""
    app = App("history-tests", broker_url=broker_url, exchange=f"{prefix}.x")

    @app.task(queue=f"{prefix}.jobs", name="hist.work")
    def work(n: int, note: str = "") -> int:
        return n

    @app.task(queue=f"{prefix}.jobs", name="hist.fail", mask_args=("secret",))
    def fail(n: int, secret: str = "") -> None:
        raise ValueError(f"bad input {n}")

    @app.task(queue=f"{prefix}.jobs", name="hist.steps", bind=True)
    def steps(ctx: TaskContext, n: int, pause_s: float = 0.4) -> int:
        for i in range(n):
            time.sleep(pause_s)
            ctx.progress(i + 1, n, f"step {i + 1}")
        return n

    @app.task(queue=f"{prefix}.jobs", name="hist.long", bind=True)
    def long(ctx: TaskContext, total: int = 10) -> str:
        ctx.progress(3, total, "resizing images")
        deadline = time.monotonic() + 60
        while not gate_path(prefix).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        ctx.progress(total, total, "done")
        return "finished"

    @app.task(queue=f"{prefix}.jobs", name="hist.once", unique_for=30)
    def once(key: str) -> None:
        with (Path(os.environ.get("RT_TEST_LEDGER", "/tmp/rt-ledger")) / f"{prefix}.once").open("a") as ledger:
            ledger.write(f"{key}\n")

    @app.task(queue=f"{prefix}.jobs", name="hist.report", unique_for=4, unique_key=lambda user, **_: user)
    def report(user: str, day: str = "") -> None: ...

    return app


app = make_app(os.environ.get("RT_TEST_PREFIX", "hist"))


def gate_path(prefix: str) -> Path:
    """`hist.long` waits at step 3 until this file exists (at most 60 s)."""
    return Path(os.environ.get("RT_TEST_LEDGER", "/tmp/rt-ledger")) / f"{prefix}.go-on"
