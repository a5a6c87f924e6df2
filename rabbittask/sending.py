"""How a call becomes a message: `SendOptions` (the one definition of the send options), the body, the
delay and expiry headers, the priority check, signing and the trace context.

`Task` sends through these with its validated arguments; `App.send_task` sends a task by name, from a
producer that does not import its code.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError
from typing_extensions import TypedDict  # pydantic reads typing's TypedDict only from Python 3.12

from rabbittask import tracing
from rabbittask.celery.send import celery_message
from rabbittask.errors import ArgumentsInvalid, ConfigError, PayloadError
from rabbittask.explain import describe, unknown_names
from rabbittask.message import Outgoing, encode_body, new_id
from rabbittask.retry import due_in_ms, schedule_headers
from rabbittask.signing import sign

if TYPE_CHECKING:
    from rabbittask.app import App

Args = tuple[Any, ...] | list[Any]  # positional arguments of a task call
TASK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,199}$")


class SendOptions(TypedDict, total=False):
    """How one call is sent: the keywords of `apply_async`, `aapply_async`, `message` and `Signature.apply_async`.

    `countdown` (seconds) or `eta` (a datetime; naive means local time) delay it on the broker's
    delay ladder; `expires` (seconds from now, or a datetime) makes a worker drop it unrun, into the
    dead-letter queue with reason "expired", once that time has passed.
    """

    queue: str | None  # another of the app's queues than the task's own
    priority: int | None  # on a queue declared with max_priority
    headers: Mapping[str, Any] | None  # added to the message's headers (e.g. a traceparent)
    message_id: str | None  # the task id; default a new UUID (sending again with the same id is recognisable)
    countdown: float | None
    eta: datetime | None
    expires: float | datetime | None
    celery: bool | None  # a Celery protocol 2 message, for Celery workers (default: the task's accept_celery)


SEND_OPTIONS = SendOptions.__optional_keys__
_NO_OPTIONS = SendOptions()  # never changed: .delay() and .call() send with none


SEND_OPTIONS = SendOptions.__optional_keys__
NO_OPTIONS = SendOptions()  # never changed: .delay() and .call() send with none
_OPTIONS = TypeAdapter(SendOptions)  # checks the values; built once, used only when options are given


def check_call(task_name: str, args: Any, kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """`args` as a tuple and `kwargs` as a dict; `ArgumentsInvalid` saying what to pass instead."""
    if not isinstance(args, list | tuple):
        raise ArgumentsInvalid(
            f"task {task_name!r}: args must be a tuple or list of the positional arguments, got "
            f"{type(args).__name__} {args!r:.60}: e.g. apply_async(({args!r:.40},)) for one argument"
        )
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise ArgumentsInvalid(
            f"task {task_name!r}: kwargs must be a dict of the keyword arguments, got {type(kwargs).__name__} "
            f"{kwargs!r:.60}"
        )
    return tuple(args), dict(kwargs or {})


def _read_options(task_name: str, options: SendOptions) -> SendOptions:
    try:
        checked: SendOptions = _OPTIONS.validate_python(options)
    except ValidationError as e:
        raise ConfigError(f"task {task_name!r}: invalid send option(s): {describe(e)}") from None
    return checked


def message_by_name(
    app: App, name: str, args: Args, kwargs: Mapping[str, Any] | None, options: SendOptions
) -> Outgoing:
    """The message of `app.send_task(name, ...)`: through the task if the app declares it, else unvalidated."""
    task = app.tasks.get(name)
    if task is not None:
        return task.message(args, kwargs, **options)
    if not isinstance(name, str) or not TASK_NAME.match(name):
        raise ConfigError(
            f"send_task: {name!r} is not a task name: use the name the task is registered under, e.g. "
            "'shop.tasks.send_email' (letters, digits and _ . : -)"
        )
    args, kw = check_call(name, args, kwargs)
    if options.get("celery"):
        return celery_message(app, name, app.settings.default_queue, args, kw, checked(name, options))
    body = encode_call(app, name, args, kw)
    return build_message(app, name, app.settings.default_queue, body, options)


def encode_call(app: App, task_name: str, args: Args, kwargs: dict[str, Any]) -> bytes:
    """The JSON body of a call; `PayloadError` when it is larger than the app's `max_payload_bytes`."""
    body = encode_body(args, kwargs)
    if len(body) > app.settings.max_payload_bytes:
        raise PayloadError(
            f"task {task_name!r}: the message body is {len(body)} bytes, above max_payload_bytes "
            f"({app.settings.max_payload_bytes}); pass a reference (a URL, a key) instead of the data"
        )
    return body


def build_message(app: App, task_name: str, queue: str, body: bytes, options: SendOptions) -> Outgoing:
    """The message that sends `body` to task `task_name` on `queue`, with the send options, signed if set up."""
    msg = _with_options(app, task_name, queue, body, options) if options else Outgoing(queue, body, new_id(), task_name)
    if app.settings.signing_key_id is not None:
        sign(app.settings, msg)
    tracing.inject(msg)  # not signed: a worker forwards trace headers of the task it runs
    return msg


def checked(task_name: str, options: SendOptions) -> SendOptions:
    """The send options, checked: `TypeError` for an unknown one, `ConfigError` for a bad value."""
    if not SEND_OPTIONS.issuperset(options):  # what Python says of an unexpected keyword, with the known ones
        unknown = unknown_names(options.keys() - SEND_OPTIONS, SEND_OPTIONS, "send option")
        raise TypeError(f"task {task_name!r} got {unknown}; the send options are {', '.join(sorted(SEND_OPTIONS))}")
    return _read_options(task_name, options)


def _with_options(app: App, task_name: str, queue: str, body: bytes, options: SendOptions) -> Outgoing:
    options = checked(task_name, options)
    headers = options.get("headers")
    priority = options.get("priority")
    if priority is not None:
        _check_priority(app, task_name, options.get("queue") or queue, priority)
    msg = Outgoing(
        routing_key=options.get("queue") or queue,
        body=body,
        message_id=options.get("message_id") or new_id(),
        task_name=task_name,
        priority=priority,
        headers=dict(headers) if headers else None,
    )
    countdown, eta, expires = options.get("countdown"), options.get("eta"), options.get("expires")
    if countdown is not None or eta is not None or expires is not None:
        _schedule(app, task_name, msg, countdown, eta, expires)
    return msg


def _check_priority(app: App, task_name: str, queue: str, priority: int) -> None:
    """Refuse a priority on a queue declared without max_priority (or above it), saying how to declare one.

    A classic queue without one ignores priorities; a quorum queue keeps them on RabbitMQ 4.0+ only, so
    the app declares which queues take them, and the declaration is checked against the broker.
    """
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 255:
        raise ConfigError(f"task {task_name!r}: priority must be a whole number 0..255, got {priority!r}")
    spec = app.queues.get(queue)
    if spec is None:  # a queue this app does not declare (send_task): the broker's declaration decides
        return
    if spec.max_priority is None:
        why = (
            "quorum queues keep priorities on RabbitMQ 4.0+; on 3.x use queue_type='classic', a new queue: "
            "see docs/topology.md"
            if spec.queue_type == "quorum"
            else "the queue's arguments change: see docs/topology.md"
        )
        raise ConfigError(
            f"task {task_name!r}: priority={priority} needs a queue declared with max_priority, and queue {queue!r} "
            f"is a {spec.queue_type} queue without one: @app.task(queue={queue!r}, max_priority=10) ({why}); "
            "or send without priority"
        )
    if priority > spec.max_priority:
        # A classic queue caps it; a quorum queue has levels of its own (docs/compatibility.md), not this cap.
        capped = f" (the broker would treat it as {spec.max_priority})" if spec.queue_type == "classic" else ""
        raise ConfigError(
            f"task {task_name!r}: priority={priority} is outside 0..{spec.max_priority}, the max_priority of "
            f"queue {queue!r}{capped}"
        )


def _schedule(
    app: App,
    task_name: str,
    msg: Outgoing,
    countdown: float | None,
    eta: datetime | None,
    expires: float | datetime | None,
) -> None:
    now = time.time()
    delay_ms = due_in_ms(countdown, eta, now)
    if delay_ms > 0 and msg.routing_key not in app.queues:
        # Only the app's queues are bound to the ladder's due exchange; a delayed message for
        # any other queue would wait its delay and then find no way out.
        raise ConfigError(
            f"task {task_name!r}: queue {msg.routing_key!r} is not one of the app's queues, so it cannot "
            "receive delayed messages; declare a task on it or send without countdown/eta"
        )
    extra = schedule_headers(delay_ms, expires, now)
    if extra:
        msg.headers = {**(msg.headers or {}), **extra}
    msg.delay_ms = math.ceil(delay_ms)
