"""Test app for adaptive prefetch: short tasks that note themselves, and a long one that waits for a file.

Queue names come from RT_TEST_PREFIX; notes go to `<RT_TEST_LEDGER>/<prefix>`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from rabbittask import App


def make_app(prefix: str, broker_url: str | None = None) -> App:
    """Build the app; the test process and the worker subprocess build the same one."""
    app = App("prefetch-tests", broker_url=broker_url)
    ledger = Path(os.environ.get("RT_TEST_LEDGER", "/tmp/rt-ledger")) / prefix

    def note(line: str) -> None:
        with open(ledger, "a") as f:
            f.write(line + "\n")

    @app.task(queue=f"{prefix}.work", name="prefetch.short")
    def short(i: int) -> None:
        if i >= 0:  # negative: a warm-up task that only proves the task short
            note(f"short {i} pid={os.getpid()}")

    @app.task(queue=f"{prefix}.work", name="prefetch.long")
    def long(release: str) -> None:
        note(f"long started pid={os.getpid()}")
        deadline = time.monotonic() + 90  # longer than the test waits for the short ones
        while not Path(release).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        note("long done")

    return app


app = make_app(os.environ.get("RT_TEST_PREFIX", "prefetch"))
