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

QUEUE_ENV, TYPE_ENV, EXCHANGE_ENV, WIDE_ENV = "BENCH_QUEUE", "BENCH_QUEUE_TYPE", "BENCH_EXCHANGE", "BENCH_WIDE"
WIDE_QUEUES, WIDE_TASKS = 50, 200  # the start-up row of a large app: 200 tasks on 50 queues


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


def wide_queues(queue: str) -> list[str]:
    """The queues of the wide app, in the order a worker consumes them (sorted); `queue` is the first."""
    return sorted([queue, *(f"{queue}.w{k:02d}" for k in range(1, WIDE_QUEUES))])


def build(queue: str, queue_type: str = "quorum", exchange: str | None = None, *, wide: bool = False) -> BenchApp:
    """The app for one row. Quorum rows leave the queue type to rabbittask's default, as a user would."""
    settings: dict[str, Any] = {"exchange": exchange} if exchange else {}
    app = App("bench", broker_url=broker_url(), **settings)
    options: dict[str, Any] = {} if queue_type == "quorum" else {"queue_type": "classic"}
    if wide:  # 200 tasks (the same function under 200 names) spread over 50 queues
        queues = wide_queues(queue)
        for i in range(WIDE_TASKS):
            app.task(queue=queues[i % WIDE_QUEUES], name=f"bench.wide.t{i:03d}", **options)(noop)
    return BenchApp(app, app.task(queue=queue, **options)(noop), app.task(queue=queue, **options)(echo))


app = build(
    os.environ.get(QUEUE_ENV, "bench.unset"),
    os.environ.get(TYPE_ENV, "quorum"),
    os.environ.get(EXCHANGE_ENV),
    wide=bool(os.environ.get(WIDE_ENV)),
).app
