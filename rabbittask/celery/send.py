"""The producer side: a call as a Celery protocol 2 message, for a Celery worker (or a rabbittask one).

`send_task(..., celery=True)`, or any send of a task declared with `accept_celery`, comes here. The
message goes through the default exchange straight to the queue (whatever exchange Celery bound it
to), confirmed like every rabbittask publish. `countdown`/`eta` become Celery's `eta` header and
`expires` its `expires` header: a Celery worker holds an eta message in memory until it is due (its
way); a rabbittask worker parks it on the delay ladder.
"""

from __future__ import annotations

import sys
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
    reply_to = None
    if app.settings.celery_result_backend == "rpc://":  # Celery's rpc:// worker replies to this process's queue
        from rabbittask.celery.replies import CeleryRpcReader

        reader = celery_handle_reader(app)
        reply_to = reader.reply_queue if isinstance(reader, CeleryRpcReader) else None
    return Outgoing(
        routing_key=options.get("queue") or queue,
        reply_to=reply_to,
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


def celery_handle(app: App, msg: Outgoing) -> TaskHandle[Any]:
    """The handle of a sent Celery message: it reads Celery's result (celery/handle.py needs the redis extra)."""
    from rabbittask.celery.handle import CeleryHandle

    return CeleryHandle(msg.message_id, msg.task_name, msg.routing_key, app)


def celery_handle_reader(app: App) -> Any:
    """The app's reader of Celery results (celery/handle.py, loaded on use)."""
    from rabbittask.celery.handle import celery_reader

    return celery_reader(app)


def close_celery_reader(app: App) -> None:
    """Close the app's reader of Celery results, if it has one (`App.close`)."""
    handle = sys.modules.get("rabbittask.celery.handle")
    if handle is not None:
        reader = handle._READERS.pop(app, None)
        if reader is not None:
            reader.close()
