"""OpenTelemetry spans of publishes and runs (imported only by `tracing.enable()`: needs opentelemetry-api).

Span names and attributes follow the OpenTelemetry messaging semantic conventions: `publish <queue>`
(PRODUCER) and `process <queue>` (CONSUMER), `messaging.system=rabbitmq`, the exchange as
`messaging.destination.name`, the routing key, the message (task) id and body size, and the task
name as `rabbittask.task.name`. The context travels as W3C `traceparent`/`tracestate` headers,
whatever propagator the process configured, because that is what docs/protocol.md promises to
producers in other languages.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from opentelemetry import trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from rabbittask.message import Outgoing, publish_target

try:
    _VERSION = version("rabbittask")
except PackageNotFoundError:  # pragma: no cover - a source tree without install
    _VERSION = "0.0.0"


class _Headers(Getter[dict[str, Any]]):
    """Getter for the propagator: AMQP header values may arrive as bytes."""

    def get(self, carrier: dict[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            return None
        return [value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)]

    def keys(self, carrier: dict[str, Any]) -> list[str]:
        return list(carrier)


class Spans:
    """Starts the spans; the tracer comes from the global TracerProvider at each span (set it any time)."""

    def __init__(self) -> None:
        self.propagator = TraceContextTextMapPropagator()
        self._getter = _Headers()

    @contextmanager
    def publish(self, msg: Outgoing, exchange: str) -> Iterator[None]:
        """A PRODUCER span around one publish; its context goes into `msg`'s headers."""
        target_exchange, routing_key = publish_target(msg, exchange)
        attributes: dict[str, Any] = {
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "send",
            "messaging.operation.name": "publish",
            "messaging.destination.name": target_exchange,
            "messaging.rabbitmq.destination.routing_key": routing_key,
            "messaging.message.id": msg.message_id,
            "messaging.message.body.size": len(msg.body),
            "rabbittask.task.name": msg.task_name,
        }
        tracer = trace.get_tracer("rabbittask", _VERSION)
        with tracer.start_as_current_span(
            f"publish {msg.routing_key}", kind=trace.SpanKind.PRODUCER, attributes=attributes
        ):
            # The propagator's own fields (traceparent, tracestate): a context this span replaces.
            stale = self.propagator.fields
            headers = {k: v for k, v in (msg.headers or {}).items() if k not in stale}
            self.propagator.inject(headers)
            msg.headers = headers
            yield

    @contextmanager
    def process(self, task_name: str, queue: str, message: Any) -> Iterator[None]:
        """A CONSUMER span around one run, child of the context in the message's headers."""
        props = message.header.properties
        delivery = message.delivery
        parent = self.propagator.extract(props.headers or {}, getter=self._getter)
        attributes: dict[str, Any] = {
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": getattr(delivery, "exchange", "") or "",
            "messaging.destination.subscription.name": queue,
            "messaging.rabbitmq.destination.routing_key": getattr(delivery, "routing_key", "") or "",
            "messaging.message.id": props.message_id or "",
            "messaging.message.body.size": len(message.body),
            "rabbittask.task.name": task_name,
        }
        if props.correlation_id:
            attributes["messaging.message.conversation_id"] = props.correlation_id
        tracer = trace.get_tracer("rabbittask", _VERSION)
        with tracer.start_as_current_span(
            f"process {queue}", context=parent, kind=trace.SpanKind.CONSUMER, attributes=attributes
        ):
            yield
