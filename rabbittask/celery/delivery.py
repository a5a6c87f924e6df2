"""A delivered Celery message, as the worker's stages read it: the first stage of a Celery queue's message.

`translate` decodes the Celery request once (protocol.py) and returns a `CeleryDelivery`: the same
delivery (tag, channel, the original body and content type, so a dead letter or a retry's copy is
still a Celery message) with the properties the stages read filled in from Celery's headers: the task
name, the id, `rt-attempt` from `retries`, `rt-eta` from `eta` (a future one goes to the delay ladder,
never into worker memory) and `rt-expires` from `expires`. A message that cannot run here (pickle,
a chord, a malformed body) keeps `error`, and the run stage dead-letters it unrun with that text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from typing import Any

from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from rabbittask.celery.protocol import CeleryMessageError, CeleryRequest, decode_request
from rabbittask.message import H_ATTEMPT, H_ETA, H_EXPIRES, format_time


@dataclasses.dataclass(frozen=True)
class CeleryDelivery(DeliveredMessage):
    """A Celery message with its decoded `request`, or the `error` that refuses it."""

    request: CeleryRequest | None = None
    error: str = ""


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def translate(message: DeliveredMessage, celery_queues: Collection[str]) -> CeleryDelivery:
    """`message` (a Celery protocol 2 message) as the worker's stages read it."""
    props = message.header.properties
    headers: dict[str, Any] = dict(props.headers or {})
    request: CeleryRequest | None = None
    error = ""
    try:
        request = decode_request(headers, message.body, props.content_type, props.content_encoding)
    except CeleryMessageError as e:
        error = str(e)
    if request is not None:
        name, task_id = request.task, request.id
        headers.setdefault(H_ATTEMPT, request.retries + 1)
        if request.eta is not None:
            headers.setdefault(H_ETA, format_time(request.eta))
        if request.expires is not None:
            headers.setdefault(H_EXPIRES, format_time(request.expires))
    else:
        name = _text(headers.get("task")) or ""
        task_id = _text(headers.get("id")) or props.correlation_id or props.message_id or ""
    new_props = Basic.Properties(
        content_type=props.content_type,
        content_encoding=props.content_encoding,
        headers=headers,
        delivery_mode=props.delivery_mode,
        priority=props.priority,
        correlation_id=props.correlation_id or task_id,
        reply_to=props.reply_to or None,
        message_id=task_id,
        message_type=name,
    )
    delivery = message.delivery
    routing_key = getattr(delivery, "routing_key", None) or ""
    if routing_key not in celery_queues and len(celery_queues) == 1:
        routing_key = next(iter(celery_queues))  # published with a key of Celery's own: the one Celery queue here
    if isinstance(delivery, Basic.Deliver):
        delivery = Basic.Deliver(delivery.consumer_tag, delivery.delivery_tag, delivery.redelivered, "", routing_key)
    return CeleryDelivery(
        delivery,
        ContentHeader(0, len(message.body), new_props),
        message.body,
        message.channel,
        request=request,
        error=error,
    )
