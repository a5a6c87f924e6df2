"""Test app for the dashboard: `dash.charge` fails until a flag file exists, so a dead letter can be replayed."""

from __future__ import annotations

import os
import time
from pathlib import Path

from rabbittask import App


def flag_path(prefix: str) -> Path:
    """While this file is missing, `dash.charge` raises (and its message is dead-lettered)."""
    return Path(os.environ.get("RT_TEST_LEDGER", "/tmp/rt-ledger")) / f"{prefix}.card-ok"


def make_app(prefix: str, broker_url: str | None = None) -> App:
    """Build the app; the test process, the worker and the dashboard subprocesses build the same one."""
    # An exchange of its own: the history stream (`<exchange>.history`) then holds this test's events only.
    app = App("dashboard-tests", broker_url=broker_url, exchange=f"{prefix}.x", join_queue=f"{prefix}.join")

    @app.task(queue=f"{prefix}.orders", name="dash.charge")
    def charge(order: int) -> str:
        if not flag_path(prefix).exists():
            raise RuntimeError(f"card declined for order {order}")
        return f"order {order} paid"

    @app.task(queue=f"{prefix}.orders", name="dash.ship")
    def ship(order: int) -> int:
        return order

    @app.task(queue=f"{prefix}.orders", name="dash.pack")
    def pack(order: int, sleep_s: float = 0.0) -> int:
        time.sleep(sleep_s)
        return order

    @app.task(queue=f"{prefix}.orders", name="dash.invoice")
    def invoice(orders: list[int]) -> int:
        return len(orders)

    return app


app = make_app(os.environ.get("RT_TEST_PREFIX", "dash"))
