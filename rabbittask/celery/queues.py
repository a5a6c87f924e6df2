"""The queue of a task: one rabbittask declares from the task's options, or (`accept_celery`) the queue
Celery declared, taken as it is."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rabbittask.errors import ConfigError
from rabbittask.topology import QueueSpec

if TYPE_CHECKING:
    from rabbittask.settings import Settings
    from rabbittask.task_options import TaskOptions


def queue_spec(task_name: str, o: TaskOptions, settings: Settings, *, celery: bool) -> QueueSpec:
    """The queue of a task declared with options `o` (a Celery queue when `celery`)."""
    queue = o.queue or settings.default_queue
    if celery:
        options = (o.queue_type, o.max_priority, o.delivery_limit, o.max_length, o.overflow, o.message_ttl_ms)
        return celery_queue(task_name, queue, options, settings.delivery_limit)
    return QueueSpec(
        name=queue,
        queue_type=o.queue_type or settings.queue_type,
        delivery_limit=o.delivery_limit or settings.delivery_limit,
        max_priority=o.max_priority,
        max_length=o.max_length,
        overflow=o.overflow,
        single_active_consumer=o.single_active_consumer or o.partition_by is not None,
        message_ttl_ms=o.message_ttl_ms,
        partitions=o.partitions or 0,
    )


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


def check_same_kind(task_name: str, known: QueueSpec | None, spec: QueueSpec) -> None:
    """`ConfigError` when a queue is a Celery queue for one task and not for another."""
    if known is not None and known.celery != spec.celery:
        raise ConfigError(
            f"task {task_name!r}: queue {spec.name!r} is a Celery queue for one task and not for another: give every "
            "task on it the same accept_celery"
        )
