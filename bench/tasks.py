"""The bench's rabbittask app: a counting no-op task and an echo task on one queue per row.

The worker imports `bench.tasks:app` in its own process, so the row's queue, queue type and
exchange come in through `BENCH_QUEUE`, `BENCH_QUEUE_TYPE` and `BENCH_EXCHANGE`; the bench
itself calls `build()` with the same values, so task names and topology agree on both sides.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from bench.config import broker_url
from bench.counter import process_counter
from rabbittask import App

QUEUE_ENV, TYPE_ENV, EXCHANGE_ENV = "BENCH_QUEUE", "BENCH_QUEUE_TYPE", "BENCH_EXCHANGE"


def noop(i: int) -> None:
    """Do nothing but count the completion (an mmap write, about a microsecond)."""
    counter = process_counter()
    if counter is not None:
        counter.start()
        counter.done()


def echo(i: int) -> int:
    """Return the argument: the `.call()` round trip."""
    return i


class BenchApp(NamedTuple):
    app: App
    noop: Any  # rabbittask Task
    echo: Any


def build(queue: str, queue_type: str = "quorum", exchange: str | None = None) -> BenchApp:
    """The app for one row. Quorum rows leave the queue type to rabbittask's default, as a user would."""
    settings: dict[str, Any] = {"exchange": exchange} if exchange else {}
    app = App("bench", broker_url=broker_url(), **settings)
    if queue_type == "quorum":
        return BenchApp(app, app.task(queue=queue)(noop), app.task(queue=queue)(echo))
    classic = app.task(queue=queue, queue_type="classic")
    return BenchApp(app, classic(noop), classic(echo))


app = build(
    os.environ.get(QUEUE_ENV, "bench.unset"), os.environ.get(TYPE_ENV, "quorum"), os.environ.get(EXCHANGE_ENV)
).app
