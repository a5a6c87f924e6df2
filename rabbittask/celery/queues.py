"""The queue of a task declared with `accept_celery`: the queue Celery declared, taken as it is."""

from __future__ import annotations

from typing import Any

from rabbittask.errors import ConfigError
from rabbittask.topology import QueueSpec


def celery_queue(task_name: str, queue: str, queue_options: tuple[Any, ...], delivery_limit: int | None) -> QueueSpec:
    """The spec of a Celery queue; `ConfigError` if queue options were given (the queue is Celery's).

    Celery declares a classic, durable queue without arguments: rabbittask neither re-declares nor checks
    it. Redeliveries are counted by the worker (`rt-delivery-count`), as on any classic queue.
    """
    if any(v is not None for v in queue_options):
        raise ConfigError(
            f"task {task_name!r}: queue {queue!r} is a Celery queue (accept_celery), taken as Celery declared it; "
            "drop queue_type, max_priority, delivery_limit, max_length, overflow and message_ttl_ms (they need "
            "a queue rabbittask declares: move the task to one once Celery no longer uses this queue)"
        )
    return QueueSpec(name=queue, queue_type="classic", delivery_limit=delivery_limit, celery=True)
