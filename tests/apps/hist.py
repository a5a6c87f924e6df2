"""Test app for the task history: on an exchange of its own, so its history stream is the test's alone."""

from __future__ import annotations

import os

from rabbittask import App


def make_app(prefix: str, broker_url: str | None = None) -> App:
    """Build the app; the test process, the worker, the dashboard and `rabbittask events` build the same one."""
    app = App("history-tests", broker_url=broker_url, exchange=f"{prefix}.x")

    @app.task(queue=f"{prefix}.jobs", name="hist.work")
    def work(n: int, note: str = "") -> int:
        return n

    @app.task(queue=f"{prefix}.jobs", name="hist.fail", mask_args=("secret",))
    def fail(n: int, secret: str = "") -> None:
        raise ValueError(f"bad input {n}")

    return app


app = make_app(os.environ.get("RT_TEST_PREFIX", "hist"))
