"""The producer side: a call as a Celery protocol 2 message, for a Celery worker (or a rabbittask one).

`send_task(..., celery=True)`, or any send of a task declared with `accept_celery`, comes here. The
message goes through the default exchange straight to the queue (whatever exchange Celery bound it
to), confirmed like every rabbittask publish. `countdown`/`eta` become Celery's `eta` header and
`expires` its `expires` header: a Celery worker holds an eta message in memory until it is due (its
way); a rabbittask worker parks it on the delay ladder.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rabbittask.celery.protocol import encode_request
from rabbittask.message import CONTENT_TYPE, Outgoing, new_id
from rabbittask.retry import due_in_ms

if TYPE_CHECKING:
    from rabbittask.app import App
    from rabbittask.handle import TaskHandle
    from rabbittask.sending import SendOptions


def celery_message(
    app: App,
    task_name: str,
    queue: str,
    args: tuple[Any, ...] | list[Any],
    kwargs: dict[str, Any],
    options: SendOptions,
) -> Outgoing:
    """The Celery protocol 2 message of a call (JSON serializer), ready to publish with confirms."""
    now = time.time()
    countdown, eta = options.get("countdown"), options.get("eta")
    due = now + due_in_ms(countdown, eta, now) / 1000 if countdown is not None or eta is not None else None
    expires = _expires(options.get("expires"), now)
    task_id = options.get("message_id") or new_id()
    headers, body = encode_request(task_name, task_id, list(args), kwargs, eta=due, expires=expires)
    extra: Mapping[str, Any] | None = options.get("headers")
    if extra:
        headers = {**extra, **headers}
    return Outgoing(
        routing_key=options.get("queue") or queue,
        body=body,
        message_id=task_id,
        task_name=task_name,
        priority=options.get("priority"),
        headers=headers,
        correlation_id=task_id,
        content_type=CONTENT_TYPE,
        exchange="",  # the default exchange: straight to the queue, whatever Celery bound to it
    )


def _expires(value: float | datetime | None, now: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    return now + float(value)


def celery_handle(app: App, msg: Outgoing) -> TaskHandle:
    """The handle of a sent Celery message: it reads Celery's result (celery/handle.py needs the redis extra)."""
    from rabbittask.celery.handle import CeleryHandle

    return CeleryHandle(msg.message_id, msg.task_name, msg.routing_key, app)
