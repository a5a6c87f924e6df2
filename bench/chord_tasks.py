"""The chord bench's app: the counting no-op task as members, and a callback that notes when it started.

The worker imports `bench.chord_tasks:app`; the queue and exchange come in through `BENCH_QUEUE` and
`BENCH_EXCHANGE`, and the bench calls `build()` with the same values.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from bench.config import broker_url
from bench.counter import ENV
from bench.tasks import EXCHANGE_ENV, QUEUE_ENV, noop
from rabbittask import App


def joined(results: list[Any]) -> int:
    """The chord's callback: write the monotonic time it started (the end of the join latency)."""
    started_ns = time.monotonic_ns()
    directory = os.environ.get(ENV)
    if directory:
        (Path(directory) / "joined.ns").write_text(str(started_ns))
    return len(results)


def build(queue: str, exchange: str) -> tuple[App, Any, Any]:
    """The app of one row, its member task and its callback task."""
    app = App("bench-chord", broker_url=broker_url(), exchange=exchange)
    return app, app.task(queue=queue)(noop), app.task(queue=queue)(joined)


app = build(os.environ.get(QUEUE_ENV, "bench.unset"), os.environ.get(EXCHANGE_ENV, "bench.unset.x"))[0]
