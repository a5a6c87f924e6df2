"""The broker topology as data: names, queue arguments, declarations and the definitions export.

Everything rabbittask declares is derived here, in pure functions, so that the worker, the
publishers and `rabbittask topology export` cannot disagree.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from rabbittask.errors import ConfigError
from rabbittask.settings import QueueType

Arguments = dict[str, Any]
Overflow = Literal["drop-head", "reject-publish", "reject-publish-dlx"]
OVERFLOWS: tuple[Overflow, ...] = ("drop-head", "reject-publish", "reject-publish-dlx")


def dlx_name(exchange: str) -> str:
    """Name of the dead-letter exchange beside a task exchange."""
    return f"{exchange}.dlx"


def events_exchange_name(exchange: str) -> str:
    """Name of the topic exchange that carries task events and worker heartbeats beside a task exchange."""
    return f"{exchange}.events"


def history_stream_name(exchange: str) -> str:
    """Name of the stream that keeps the task events of a task exchange (bound to its events exchange)."""
    return f"{exchange}.history"


def history_arguments(max_age_s: int, max_bytes: int) -> Arguments:
    """Arguments of the history stream: retention by age and by size, whichever comes first.

    A stream drops whole segments only, so segments are a tenth of the size limit (at most the
    broker's 500 MB default): the stream then keeps between 90% and 100% of what it may.
    """
    return {
        "x-queue-type": "stream",
        "x-max-age": f"{max_age_s}s",
        "x-max-length-bytes": max_bytes,
        "x-stream-max-segment-size-bytes": min(max_bytes // 10, 500_000_000),
    }


def control_exchange_name(exchange: str) -> str:
    """Name of the fanout exchange that broadcasts control commands (inspect, ping, revoke) to every worker child."""
    return f"{exchange}.control"


def revoked_stream_name(exchange: str) -> str:
    """Name of the stream that keeps revocations for the retention window (`revoke_retention_s`)."""
    return f"{exchange}.revoked"


def presence_stream_name(exchange: str) -> str:
    """Name of the stream where worker children say they are alive (who must answer a broadcast)."""
    return f"{exchange}.workers"


def dlq_name(queue: str) -> str:
    """Name of the dead-letter queue of a task queue."""
    return f"{queue}.dlq"


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A task queue and its options, as the code wants it on the broker."""

    name: str
    queue_type: QueueType = "quorum"
    delivery_limit: int | None = 20
    max_priority: int | None = None
    max_length: int | None = None
    overflow: Overflow | None = None
    single_active_consumer: bool = False
    message_ttl_ms: int | None = None
    partitions: int = 0  # > 0: that many partition queues behind a consistent-hash exchange (partitions.py)
    celery: bool = False  # a Celery queue: taken as Celery declared it (see `QueueDecl.adopt`)

    def __post_init__(self) -> None:
        if not self.name or self.name.startswith("amq.") or len(self.name) > 200:
            raise ConfigError(f"queue name {self.name!r} is not allowed: use 1-200 characters, not starting 'amq.'")
        # On a quorum queue, priorities need RabbitMQ 4.0+: checked against the broker (amqp/server.py `for_server`).
        if self.max_priority is not None and not 1 <= self.max_priority <= 255:
            raise ConfigError(f"queue {self.name!r}: max_priority must be 1..255, got {self.max_priority}")
        check_queue_options(self)


@dataclass(frozen=True, slots=True)
class ExchangeDecl:
    name: str
    type: str = "direct"
    arguments: Arguments = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class QueueDecl:
    """A queue to declare. `adopt`: a queue another system owns (Celery's): used as it is when it exists,
    never re-declared (its arguments may differ); declared the way Celery would (classic, durable, an
    exchange of its name bound with its name) only when it is missing."""

    name: str
    arguments: Arguments = field(default_factory=dict)
    adopt: bool = False
    # A queue whose messages must never be dropped for being delivered too often (a DLQ): on brokers
    # with a default delivery limit (4.0+) it is declared unlimited (amqp/server.py `for_server`).
    unlimited: bool = field(default=False, compare=False)
    # A quorum queue sent priorities (`max_priority`): 4.0+ keeps them with no argument, 3.x has none,
    # so `for_server` refuses it there before anything is declared.
    quorum_priorities: bool = field(default=False, compare=False)


@dataclass(frozen=True, slots=True)
class BindingDecl:
    queue: str
    exchange: str
    routing_key: str


@dataclass(frozen=True, slots=True)
class ExchangeBindingDecl:
    """An exchange-to-exchange binding (the delay ladder passes a level on to the next one)."""

    destination: str
    source: str
    routing_key: str


Declaration = ExchangeDecl | QueueDecl | BindingDecl | ExchangeBindingDecl
BindingKey = tuple[str, str, str, str]  # source, destination, destination type, routing key


def binding_key(d: BindingDecl | ExchangeBindingDecl) -> BindingKey:
    """What identifies a binding on the broker (and orders bindings in the definitions)."""
    if isinstance(d, BindingDecl):
        return d.exchange, d.queue, "queue", d.routing_key
    return d.source, d.destination, "exchange", d.routing_key


def queue_arguments(spec: QueueSpec, exchange: str) -> Arguments:
    """The `x-*` arguments of a task queue."""
    args: Arguments = {
        "x-queue-type": spec.queue_type,
        # Failures the broker decides (delivery-limit, a worker's reject) go to <queue>.dlq.
        "x-dead-letter-exchange": dlx_name(exchange),
        "x-dead-letter-routing-key": spec.name,
    }
    if spec.queue_type == "quorum":
        # 3.x has no default delivery-limit: without one a message that kills its worker loops forever.
        if spec.delivery_limit is not None:
            args["x-delivery-limit"] = spec.delivery_limit
        # At-least-once dead-lettering (else the broker may drop a dead letter); it requires reject-publish.
        args["x-dead-letter-strategy"] = "at-least-once"
        args["x-overflow"] = "reject-publish"
    if spec.max_priority is not None and spec.queue_type == "classic":
        # Quorum queues take no x-max-priority: 4.0+ honours message priorities without it.
        args["x-max-priority"] = spec.max_priority
    args.update(option_arguments(spec))
    return args


def check_queue_options(spec: QueueSpec) -> None:
    """Refuse option values and combinations RabbitMQ 3.10 rejects or silently weakens, saying what to do."""
    where = f"queue {spec.name!r}"
    if spec.max_length is not None and not 0 <= spec.max_length < 2**31:
        raise ConfigError(f"{where}: max_length must be 0..2147483647 messages, got {spec.max_length}")
    if spec.message_ttl_ms is not None and not 0 <= spec.message_ttl_ms < 2**32:
        raise ConfigError(f"{where}: message_ttl_ms must be 0..4294967295, got {spec.message_ttl_ms}")
    if spec.delivery_limit is not None and spec.delivery_limit < 0:
        raise ConfigError(f"{where}: delivery_limit must be >= 0, got {spec.delivery_limit}")
    if spec.overflow is not None:
        if spec.overflow not in OVERFLOWS:
            raise ConfigError(f"{where}: overflow must be one of {', '.join(OVERFLOWS)}, got {spec.overflow!r}")
        if spec.max_length is None:
            raise ConfigError(f"{where}: overflow={spec.overflow!r} has no effect without max_length; set both")
        if spec.queue_type == "quorum" and spec.overflow != "reject-publish":
            # Quorum task queues dead-letter at-least-once, which the broker honours only with
            # reject-publish; with drop-head it falls back to at-most-once and logs a warning.
            raise ConfigError(
                f"{where}: a quorum queue here must use overflow='reject-publish' (at-least-once dead-lettering "
                f"needs it; {spec.overflow!r} would drop dead letters); use queue_type='classic' for "
                f"{spec.overflow!r}"
            )


# Which task option sets which queue argument, for messages that say how to fix a difference.
ARGUMENT_OPTIONS: dict[str, str] = {
    "x-queue-type": "queue_type",
    "x-delivery-limit": "delivery_limit",
    "x-max-priority": "max_priority",
    "x-max-length": "max_length",
    "x-overflow": "overflow",
    "x-single-active-consumer": "single_active_consumer",
    "x-message-ttl": "message_ttl_ms",
}


def option_arguments(spec: QueueSpec) -> Arguments:
    """The `x-*` arguments of the optional per-queue settings (length limit, single consumer, TTL)."""
    args: Arguments = {}
    if spec.max_length is not None:
        args["x-max-length"] = spec.max_length
        if spec.overflow is not None:
            args["x-overflow"] = spec.overflow
    if spec.single_active_consumer:
        # One consumer at a time gets the queue's messages, in order; others wait as hot standbys.
        args["x-single-active-consumer"] = True
    if spec.message_ttl_ms is not None:
        # An expired task is dead-lettered to <queue>.dlq (reason "expired"), not silently dropped.
        args["x-message-ttl"] = spec.message_ttl_ms
    return args


def dlq_arguments(spec: QueueSpec) -> Arguments:
    """The arguments of a dead-letter queue: same type as its task queue, no dead-lettering of its own."""
    return {"x-queue-type": spec.queue_type}


def declarations(exchange: str, queues: Iterable[QueueSpec]) -> list[Declaration]:
    """Everything to declare for `queues`, in an order the broker accepts (partitioned ones: partitions.py)."""
    decls: list[Declaration] = [ExchangeDecl(exchange), ExchangeDecl(dlx_name(exchange))]
    for spec in sorted((q for q in queues if not q.partitions), key=lambda q: q.name):
        decls += [
            # A Celery queue keeps Celery's declaration (classic, no dead-letter arguments): its failures
            # are dead-lettered by the worker, which publishes them to the DLX itself (confirmed, then ack).
            QueueDecl(spec.name, {}, adopt=True)
            if spec.celery
            # delivery_limit=None means none, also where the broker would default one (4.0+: 20).
            else QueueDecl(
                spec.name,
                queue_arguments(spec, exchange),
                unlimited=spec.delivery_limit is None,
                quorum_priorities=spec.queue_type == "quorum" and spec.max_priority is not None,
            ),
            BindingDecl(spec.name, exchange, spec.name),
            QueueDecl(dlq_name(spec.name), dlq_arguments(spec), unlimited=True),
            BindingDecl(dlq_name(spec.name), dlx_name(exchange), spec.name),
        ]
    return decls


def definitions(decls: Iterable[Declaration], vhost: str = "/") -> dict[str, Any]:
    """RabbitMQ definitions JSON (as `rabbitmqctl import_definitions` reads it) for `decls`."""
    out: dict[str, list[dict[str, Any]]] = {"exchanges": [], "queues": [], "bindings": []}
    for d in decls:
        if isinstance(d, ExchangeDecl):
            out["exchanges"].append(
                {
                    "name": d.name,
                    "vhost": vhost,
                    "type": d.type,
                    "durable": True,
                    "auto_delete": False,
                    "internal": False,
                    "arguments": d.arguments,
                }
            )
        elif isinstance(d, QueueDecl):
            out["queues"].append(
                {"name": d.name, "vhost": vhost, "durable": True, "auto_delete": False, "arguments": d.arguments}
            )
        elif isinstance(d, BindingDecl):
            out["bindings"].append(_binding(d.exchange, d.queue, "queue", d.routing_key, vhost))
        else:
            out["bindings"].append(_binding(d.source, d.destination, "exchange", d.routing_key, vhost))
    for key in out:
        out[key].sort(key=_definition_order)
    return out


NaturalKey = tuple[tuple[str | int, ...], str]


def natural_key(text: str) -> NaturalKey:
    """Sort key for names: numbers by value (`x.delay.200` before `x.delay.1600`), then the text itself.

    The text breaks ties (`a01`, `a1`), so the order is total and an export is byte-identical
    whatever order the tasks were declared in.
    """
    parts = re.split(r"(\d+)", text)  # odd positions are the digit runs, so like compares with like
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), text


def _definition_order(o: dict[str, Any]) -> tuple[NaturalKey, ...]:
    """Objects by name; bindings by source, destination, then what breaks a tie."""
    keys = ("name", "source", "destination", "destination_type", "routing_key")
    return tuple(natural_key(str(o.get(k, ""))) for k in keys)


def _binding(source: str, destination: str, destination_type: str, routing_key: str, vhost: str) -> dict[str, Any]:
    return {
        "source": source,
        "vhost": vhost,
        "destination": destination,
        "destination_type": destination_type,
        "routing_key": routing_key,
        "arguments": {},
    }


_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<arg>[^']+)' for (?P<kind>queue|exchange) '(?P<name>[^']+)'"
    r".*?received (?P<received>.*?) but current is (?P<current>.*)$"
)


def explain_precondition(reply_text: str, wanted: Arguments | None = None) -> str:
    """Turn a broker PRECONDITION_FAILED text into what differs and how to fix it."""
    m = _INEQUIVALENT.search(reply_text)
    if not m:
        return f"the broker refused a declaration: {reply_text}"
    arg, kind, name = m.group("arg"), m.group("kind"), m.group("name")
    want = repr((wanted or {})[arg]) if arg in (wanted or {}) else "it unset"
    return (
        f"{kind} {name!r} exists with other arguments: {arg} is {_broker_value(m.group('current'))} on the broker, "
        f"the code declares {want}. Fix one side: change the task's queue options to match, or, if the "
        f"{kind} may be recreated, drain and delete it (rabbitmqctl delete_queue {name}) and start again; "
        f"a queue's type can never change in place."
    )


def _broker_value(text: str) -> str:
    """`the value 'x' of type 'longstr'` -> `'x'`; `none` -> `not set`."""
    m = re.match(r"the value (?P<value>.*) of type '[a-z]+'", text.strip())
    if m:
        return m.group("value")
    return "not set" if text.strip() == "none" else text.strip()


def service_declarations(
    exchange: str, *, history: tuple[int, int] | None, control_retention_s: float | None
) -> list[Declaration]:
    """What workers declare beside the task queues, so `topology export/apply/diff` know it too.

    `history`: (max age s, max bytes) of the task history stream, bound to the events exchange (task
    events and beat ticks); `control_retention_s`: the revocation window, with the control plane's
    broadcast exchange and its two streams.
    """
    decls: list[Declaration] = []
    if history is not None:
        stream, events = history_stream_name(exchange), events_exchange_name(exchange)
        decls += [
            QueueDecl(stream, history_arguments(*history)),
            BindingDecl(stream, events, "task.#"),
            BindingDecl(stream, events, "beat.#"),
        ]
    if control_retention_s is not None:
        decls += [
            ExchangeDecl(control_exchange_name(exchange), "fanout"),
            QueueDecl(revoked_stream_name(exchange), control_stream_arguments(control_retention_s)),
            QueueDecl(presence_stream_name(exchange), control_stream_arguments(PRESENCE_AGE_S)),
        ]
    return decls


PRESENCE_AGE_S = 600  # presence records are read only a few heartbeats back
CONTROL_SEGMENT_BYTES = 1_000_000  # a stream drops whole segments: small ones keep the window close to x-max-age


def control_stream_arguments(max_age_s: float) -> Arguments:
    """Arguments of a control stream (revocations, presence): retention by age, in small segments."""
    return {
        "x-queue-type": "stream",
        "x-max-age": f"{max(1, round(max_age_s))}s",
        "x-stream-max-segment-size-bytes": CONTROL_SEGMENT_BYTES,
    }
