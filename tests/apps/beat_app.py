"""Test app for beat: an every-second schedule and a Berlin cron; names come from RT_TEST_PREFIX."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from rabbittask import App


def make_app(prefix: str, broker_url: str | None = None, expires_s: float | None = None) -> App:
    """Build the app; the test process and the beat/worker subprocesses build the same one."""
    app = App(f"beat-{prefix}", broker_url=broker_url)
    ledger = Path(os.environ.get("RT_TEST_LEDGER", "/tmp/rt-ledger")) / prefix

    @app.task(queue=f"{prefix}.ticks", name="beat.tick")
    def tick(label: str) -> None:
        ledger.parent.mkdir(parents=True, exist_ok=True)
        with open(ledger, "a") as f:
            f.write(f"ran {label}\n")

    @app.task(queue=f"{prefix}.reports", name="beat.report")
    def report(day: str) -> str:
        return day

    app.schedule("every-second", tick.s(label="s"), every=timedelta(seconds=1), expires=expires_s)
    app.schedule("nightly-report", report.s(day="yesterday"), cron="30 2 * * *", tz="Europe/Berlin")
    return app


_expires = os.environ.get("RT_TEST_EXPIRES_S")
app = make_app(os.environ.get("RT_TEST_PREFIX", "beat"), expires_s=float(_expires) if _expires else None)
