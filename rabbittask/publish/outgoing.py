"""A message ready to publish, independent of the client library that sends it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rabbittask.errors import PublishNotConfirmed
from rabbittask.message import CONTENT_TYPE
from rabbittask.settings import mask_url
from rabbittask.topology import delay_entry


@dataclass(slots=True)
class Outgoing:
    """One task message: routing key (the queue), JSON body and the AMQP properties rabbittask sets."""

    routing_key: str
    body: bytes
    message_id: str
    task_name: str
    priority: int | None = None
    headers: dict[str, Any] | None = None
    reply_to: str | None = None
    correlation_id: str | None = None
    content_type: str = CONTENT_TYPE
    exchange: str | None = None  # None: the app's task exchange
    # Direct replies go out without `mandatory`: RabbitMQ 3.x returns them as unroutable although it delivered them.
    mandatory: bool = True
    # > 0: publish into the delay ladder, due for `routing_key` (the task queue) after this long.
    delay_ms: int = 0


def publish_target(msg: Outgoing, exchange: str) -> tuple[str, str]:
    """Exchange and routing key of `msg`: the task exchange (or its own), or the delay ladder's entry."""
    if msg.delay_ms > 0:
        return delay_entry(exchange, msg.routing_key, msg.delay_ms)
    return (exchange if msg.exchange is None else msg.exchange), msg.routing_key


def missing_exchange(msg: Outgoing, exchange: str, reply: str) -> PublishNotConfirmed:
    """The error for a publish to an exchange the broker does not have (it closes the channel with 404)."""
    return PublishNotConfirmed(
        f"task {msg.task_name!r} (id {msg.message_id}) was not published: exchange {exchange!r} does not exist on "
        f"the broker ({mask_url(reply)}). Declare the topology (start a worker or run `rabbittask topology apply`) "
        "or check the exchange setting"
    )
