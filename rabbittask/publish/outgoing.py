"""A message ready to publish, independent of the client library that sends it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rabbittask.message import CONTENT_TYPE


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
