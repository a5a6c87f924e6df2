"""The bench's Celery-format apps: a rabbittask app on a Celery queue and a Celery app, one no-op each.

Both name the task `bench.tasks.noop`, as the counting no-op of `bench/tasks.py`, so the same
pre-queued Celery messages are drained by either worker. The queue comes in through `BENCH_QUEUE`.
"""

from __future__ import annotations

import os
from typing import Any

from bench.config import broker_url
from bench.counter import process_counter
from rabbittask import App

NAME = "bench.tasks.noop"


def noop(i: int) -> None:
    counter = process_counter()
    if counter is not None:
        counter.start()
        counter.done()


def build(queue: str) -> tuple[App, Any]:
    """The rabbittask app whose queue `queue` is a Celery queue, and its no-op task."""
    app = App("bench-celery", broker_url=broker_url(), accept_celery=True, default_queue=queue, events=False)
    return app, app.task(name=NAME)(noop)


def celery_app(queue: str) -> Any:
    """A Celery app (JSON, late acks as rabbittask) with the same no-op, for `celery worker`."""
    from celery import Celery

    capp = Celery("bench", broker=broker_url())
    capp.conf.update(
        task_default_queue=queue,
        task_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        worker_prefetch_multiplier=1000,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )
    capp.task(name=NAME, shared=False)(noop)
    return capp


QUEUE = os.environ.get("BENCH_QUEUE", "bench.unset")
app = build(QUEUE)[0]
celery = celery_app(QUEUE) if os.environ.get("BENCH_CELERY") else None
