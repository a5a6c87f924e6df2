"""The delay ladder: where countdowns, ETAs and retry back-offs wait on the broker.

Pure functions, like topology.py: names, routing keys and queue arguments of the ladder's levels,
and the declarations that build it. docs/topology.md ("Delays: the delay ladder") explains it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from rabbittask.errors import ConfigError
from rabbittask.settings import QueueType
from rabbittask.topology import (
    Arguments,
    BindingDecl,
    Declaration,
    ExchangeBindingDecl,
    ExchangeDecl,
    QueueDecl,
)

# -- the delay ladder -----------------------------------------------------------------------------
#
# Delays (countdown, eta, retry back-off) wait on the broker in queues that each have ONE fixed
# x-message-ttl, because RabbitMQ expires messages only at the head of a queue: with per-message
# TTLs a 1 h message at the head would hold up a 1 s one behind it. In a queue where every message
# lives equally long, arrival order is expiry order, so nothing ever waits behind a longer delay.
#
# Level k holds a message for DELAY_BASE_MS * 2**k. A delay, rounded up to whole base units, is
# the sum of the levels of its set bits, so any delay up to MAX_DELAY_MS takes at most
# DELAY_LEVELS hops and sits in each level at most once (no dead-letter cycle). The routing key
# carries the bits, lowest level first, then the task queue: "0.1.0.1.0...0.emails" is 1,000 ms.
# Every level has a topic exchange and a queue of the same name: a key whose bit k is 1 goes into
# the level's queue, which dead-letters (TTL ran out, routing key kept) to level k-1; a key whose
# bit k is 0 goes straight on to level k-1 (an exchange-to-exchange binding). Below level 0 the
# "due" exchange routes on the queue part of the key to the task queue. Level TTLs stay below
# 2**32 ms (Erlang timers); longer delays pass through the ladder again (see `rt-eta`).

DELAY_BASE_MS = 100
DELAY_LEVELS = 26
MAX_DELAY_MS = DELAY_BASE_MS * ((1 << DELAY_LEVELS) - 1)  # about 77.7 days in one pass
_TOPIC_WILDCARDS = frozenset({"*", "#"})


def delay_exchange_name(exchange: str) -> str:
    """The topic exchange where due messages leave the delay ladder for their task queue."""
    return f"{exchange}.delay"


def due_routing_exchange_name(exchange: str) -> str:
    """The topic exchange behind the due exchange that holds the binding of each task queue.

    The due exchange passes everything on to it (`#`); it has `unroutable_name(exchange)` as its
    alternate exchange, so a due message whose task queue is gone is kept, not dropped.
    """
    return f"{exchange}.delay.due"


def unroutable_name(exchange: str) -> str:
    """The fanout exchange and the queue where due messages go when no task queue takes them."""
    return f"{exchange}.unroutable"


def delay_ttl_ms(level: int) -> int:
    """How long level `level` of the delay ladder holds a message."""
    return DELAY_BASE_MS << level


def delay_level_name(exchange: str, level: int) -> str:
    """Name of the exchange and of the queue of one level of the delay ladder (`rabbittask.delay.1600`)."""
    return f"{exchange}.delay.{delay_ttl_ms(level)}"


def delay_names(exchange: str) -> frozenset[str]:
    """Every exchange and queue name of the delay ladder of `exchange` (the due exchange and each level)."""
    return frozenset(
        {
            delay_exchange_name(exchange),
            due_routing_exchange_name(exchange),
            *(delay_level_name(exchange, k) for k in range(DELAY_LEVELS)),
        }
    )


def delay_units(delay_ms: float) -> int:
    """A delay in whole base units, rounded up (a message is never due early), at most one pass."""
    return min(max(0, math.ceil(delay_ms / DELAY_BASE_MS)), (1 << DELAY_LEVELS) - 1)


def delay_routing_key(queue: str, units: int) -> str:
    """The routing key that takes a message `units` base units through the ladder to `queue`."""
    return "".join("1." if units >> k & 1 else "0." for k in range(DELAY_LEVELS)) + queue


def delay_entry(exchange: str, queue: str, delay_ms: float) -> tuple[str, str]:
    """Exchange and routing key to publish a message that is due for `queue` in `delay_ms`.

    The message enters at the level of its highest set bit; lower levels are passed by bindings.
    """
    units = delay_units(delay_ms)
    if units == 0:
        return delay_exchange_name(exchange), delay_routing_key(queue, 0)
    return delay_level_name(exchange, units.bit_length() - 1), delay_routing_key(queue, units)


def delivered_queue(exchange: str, delivery_exchange: str | None, routing_key: str | None) -> str:
    """The task queue a consumed message was routed to (ladder keys carry the delay bits first).

    A message out of the ladder is delivered with the exchange it was last dead-lettered to: the
    due exchange or any level's, depending on its lowest set bit.
    """
    key = routing_key or ""
    due = delay_exchange_name(exchange)
    if delivery_exchange and (delivery_exchange == due or delivery_exchange.startswith(due + ".")):
        return key.split(".", DELAY_LEVELS)[-1]
    return key


def check_delay_queue_name(queue: str) -> None:
    """Refuse task queue names the due exchange cannot route to (topic wildcards as a word)."""
    if _TOPIC_WILDCARDS & set(queue.split(".")):
        raise ConfigError(
            f"queue name {queue!r} cannot receive delayed messages: '*' or '#' between dots is a topic "
            "wildcard; rename the queue"
        )


def delay_queue_arguments(exchange: str, level: int, queue_type: QueueType) -> Arguments:
    """Arguments of one ladder queue: its fixed TTL and where it dead-letters when that runs out."""
    args: Arguments = {
        "x-queue-type": queue_type,
        "x-message-ttl": delay_ttl_ms(level),
        # No x-dead-letter-routing-key: the message keeps its key, whose bits route it onwards.
        "x-dead-letter-exchange": delay_level_name(exchange, level - 1) if level else delay_exchange_name(exchange),
    }
    if queue_type == "quorum":
        # At-least-once: a delayed message leaves a level only once the next one confirmed it.
        args["x-dead-letter-strategy"] = "at-least-once"
        args["x-overflow"] = "reject-publish"
    return args


def delay_declarations(exchange: str, queues: Iterable[str], queue_type: QueueType = "quorum") -> list[Declaration]:
    """The delay ladder of `exchange`, and a binding from its due exchange to each task queue."""
    due = delay_exchange_name(exchange)
    decls: list[Declaration] = [ExchangeDecl(due, "topic")]
    for level in range(DELAY_LEVELS):
        name = delay_level_name(exchange, level)
        below = delay_level_name(exchange, level - 1) if level else due
        skip = "*." * level
        decls += [
            ExchangeDecl(name, "topic"),
            QueueDecl(name, delay_queue_arguments(exchange, level, queue_type)),
            BindingDecl(name, name, f"{skip}1.#"),
            ExchangeBindingDecl(below, name, f"{skip}0.#"),
        ]
    decls += unroutable_declarations(exchange, queue_type)
    routing = due_routing_exchange_name(exchange)
    for queue in sorted(queues):
        check_delay_queue_name(queue)
        decls.append(BindingDecl(queue, routing, "*." * DELAY_LEVELS + queue))
    return decls


def unroutable_declarations(exchange: str, queue_type: QueueType = "quorum") -> list[Declaration]:
    """Where a due message goes when its task queue is gone (deleted, or never declared by a worker).

    A message dead-lettered to an exchange that routes it nowhere is dropped silently by the broker
    (a quorum level with at-least-once dead-lettering keeps retrying it instead: stuck at its last hop).
    The alternate exchange catches it. It sits on an exchange of its own behind the due exchange
    because an exchange's arguments cannot change in place: a broker with a ladder declared before it
    keeps its due exchange, and routing to a queue through both exchanges still delivers once.
    """
    due, routing, unroutable = (
        delay_exchange_name(exchange),
        due_routing_exchange_name(exchange),
        unroutable_name(exchange),
    )
    return [
        ExchangeDecl(unroutable, "fanout"),
        QueueDecl(unroutable, {"x-queue-type": queue_type}, unlimited=True),  # no limits, no TTL: kept until read
        BindingDecl(unroutable, unroutable, ""),
        ExchangeDecl(routing, "topic", {"alternate-exchange": unroutable}),
        ExchangeBindingDecl(routing, due, "#"),
    ]
