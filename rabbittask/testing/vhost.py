"""A RabbitMQ virtual host in memory: the app's own declarations, routed and expired as the broker does.

`StubBroker` (stub.py) keeps one. It is built from `App.declarations()`, the same data the workers
declare, so the stub routes what the broker would route and nothing else:

* direct, topic and fanout exchanges, exchange-to-exchange bindings, the default exchange and direct
  reply-to (`amq.rabbitmq.reply-to`); a `mandatory` message no queue takes is "unroutable";
* queue TTL (`x-message-ttl`) and per-message `expiration`, expired at the head of the queue only
  (why the delay ladder has one TTL per queue); time is the stub's clock, so the ladder's 26 levels
  pass a message on at the very instants the broker would;
* dead-lettering to `x-dead-letter-exchange` (with `x-dead-letter-routing-key`, else the message's
  own key), with `x-death` and `x-first-death-*` headers, and the broker's cycle rule: a message
  dead-lettered again into a queue it already died in, with no reject in between, is dropped
  silently (the trap that makes the worker strip `x-death` from its retry copies);
* `x-expires`: a queue declared with it is deleted once it was not declared again for that long;
* quorum queues count returns (`x-delivery-count`) and dead-letter past `x-delivery-limit`
  (reason `delivery_limit`); `x-max-length` with `drop-head`, `reject-publish` (a nack) and
  `reject-publish-dlx`; `x-max-priority` on classic queues.
"""

from __future__ import annotations

import copy
import datetime
import functools
import zlib
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pamqp.commands import Basic

from rabbittask.message import H_EXC_MESSAGE, H_EXC_TYPE, H_REASON, Body, attempt_of, decode_body
from rabbittask.partitions import HASH_EXCHANGE_TYPE
from rabbittask.results.rpc import REPLY_TO
from rabbittask.topology import BindingDecl, Declaration, ExchangeDecl, QueueDecl

Routed = Literal["routed", "unroutable", "nacked", "no exchange"]


@dataclass(eq=False)
class Message:
    """A message the stub holds: ready in a queue, waiting in the delay ladder, or dead-lettered."""

    body: bytes
    properties: Basic.Properties
    exchange: str  # the exchange it was last published or dead-lettered to
    routing_key: str
    queue: str = ""
    enqueued_at: float = 0.0
    returns: int = 0  # deliveries that ended without a settle (a quorum queue's x-delivery-count)
    redelivered: bool = False

    @property
    def id(self) -> str:
        """The task id (`message_id`)."""
        return self.properties.message_id or ""

    @property
    def task_name(self) -> str:
        return self.properties.message_type or ""

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self.properties.headers or {})

    @property
    def reason(self) -> str | None:
        """Why it is in a dead-letter queue: the worker's `rt-reason`, else the broker's `x-first-death-reason`."""
        headers = self.headers
        return headers.get(H_REASON) or headers.get("x-first-death-reason")

    @property
    def exc_type(self) -> str:
        return str(self.headers.get(H_EXC_TYPE, ""))

    @property
    def exc_message(self) -> str:
        return str(self.headers.get(H_EXC_MESSAGE, ""))

    @property
    def attempt(self) -> int:
        """Which run of its task it is (or was, in a dead-letter queue): `rt-attempt`, 1 without it."""
        return attempt_of(self.properties.headers)

    @property
    def args(self) -> list[Any]:
        """The positional arguments in the body (raises `PayloadError` if it is not a task message)."""
        return self._body().args

    @property
    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments in the body."""
        return self._body().kwargs

    def _body(self) -> Body:
        return decode_body(self.body, self.properties.content_type)

    def __repr__(self) -> str:
        why = f" reason={self.reason!r}" if self.reason else ""
        return f"<Message {self.task_name} id={self.id} queue={self.queue}{why}>"


@dataclass(eq=False)
class Queue:
    """One queue, its arguments and its ready messages (in arrival order)."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    messages: deque[Message] = field(default_factory=deque)
    declared_at: float = 0.0  # `x-expires` counts from the last declare (a stub queue has no other use)

    @property
    def quorum(self) -> bool:
        return self.arguments.get("x-queue-type") == "quorum"

    def expires_at(self, msg: Message) -> float | None:
        """When `msg` expires once at the head (queue TTL or its own `expiration`, the shorter), or None."""
        ttls = [self.arguments.get("x-message-ttl"), msg.properties.expiration]
        ms = [int(t) for t in ttls if t is not None]
        return msg.enqueued_at + min(ms) / 1000.0 if ms else None

    def take(self) -> Message | None:
        """The next message to deliver: the head, or the first of the highest priority on a priority queue."""
        if not self.messages:
            return None
        if "x-max-priority" not in self.arguments:
            return self.messages.popleft()
        cap = int(self.arguments["x-max-priority"])
        best = max(self.messages, key=lambda m: min(m.properties.priority or 0, cap))  # first of the highest
        self.messages.remove(best)
        return best


@dataclass(frozen=True, slots=True)
class Binding:
    destination: str
    to_exchange: bool
    routing_key: str


class VirtualHost:
    """Exchanges, bindings and queues of one app, with RabbitMQ's routing, expiry and dead-letter rules."""

    def __init__(self, declarations: Iterable[Declaration]) -> None:
        self.exchanges: dict[str, str] = {}  # name -> type
        self.hash_headers: dict[str, str] = {}  # consistent-hash exchange -> the header it hashes
        self.alternates: dict[str, str] = {}  # exchange -> its `alternate-exchange`
        self.bindings: dict[str, list[Binding]] = {}  # source exchange -> bindings
        self.queues: dict[str, Queue] = {}
        self.replies: dict[str, bytes] = {}  # direct reply-to bodies, by correlation id
        self.dropped: list[tuple[Message, str]] = []  # messages the broker would drop silently, and why
        for decl in declarations:
            self.declare(decl)

    def declare(self, decl: Declaration, now: float = 0.0) -> None:
        """Apply one declaration (as idempotently as the broker; a queue declared again is in use again)."""
        if isinstance(decl, ExchangeDecl):
            self.exchanges.setdefault(decl.name, decl.type)
            if decl.type == HASH_EXCHANGE_TYPE:
                self.hash_headers[decl.name] = str(decl.arguments.get("hash-header", ""))
            if "alternate-exchange" in decl.arguments:
                self.alternates.setdefault(decl.name, str(decl.arguments["alternate-exchange"]))
        elif isinstance(decl, QueueDecl):
            self.queues.setdefault(decl.name, Queue(decl.name, dict(decl.arguments))).declared_at = now
        else:
            source = decl.exchange if isinstance(decl, BindingDecl) else decl.source
            binding = (
                Binding(decl.queue, False, decl.routing_key)
                if isinstance(decl, BindingDecl)
                else Binding(decl.destination, True, decl.routing_key)
            )
            known = self.bindings.setdefault(source, [])
            if binding not in known:
                known.append(binding)

    # -- publishing ----------------------------------------------------------------------------------

    def publish(
        self, exchange: str, routing_key: str, body: bytes, props: Basic.Properties, *, now: float, mandatory: bool
    ) -> Routed:
        """Route a published message into its queues; what the publisher would hear back."""
        if exchange == "" and routing_key == REPLY_TO:
            self.replies[props.correlation_id or ""] = body
            return "routed"
        if exchange and exchange not in self.exchanges:
            return "no exchange"  # the broker closes the channel (404)
        queues = self.route(exchange, routing_key, props.headers)
        if not queues:
            return "unroutable" if mandatory else "routed"
        outcome: Routed = "routed"
        for queue in queues:
            msg = Message(body, _copy(props), exchange, routing_key, queue.name, now)
            if not self._enqueue(queue, msg, now):
                outcome = "nacked"
        return outcome

    def route(self, exchange: str, routing_key: str, headers: Mapping[str, Any] | None = None) -> list[Queue]:
        """The queues a message published to `exchange` with `routing_key` reaches (each once).

        A consistent-hash exchange sends it to one of its bindings, chosen by the hashed header (the
        same key always to the same queue; which one is the stub's own choice, not RabbitMQ's)."""
        if exchange == "":
            queue = self.queues.get(routing_key)
            return [queue] if queue is not None else []
        found: dict[str, Queue] = {}
        seen: set[str] = set()
        pending = [exchange]
        while pending:
            source = pending.pop()
            if source in seen:
                continue
            seen.add(source)
            kind = self.exchanges.get(source, "direct")
            matched = [
                b
                for b in self.bindings.get(source, ())
                if _matches(kind, b.routing_key, routing_key) and (b.to_exchange or b.destination in self.queues)
            ]
            if kind == HASH_EXCHANGE_TYPE and matched:
                key = str((headers or {}).get(self.hash_headers.get(source, ""), ""))
                matched = [matched[zlib.crc32(key.encode()) % len(matched)]]
            if not matched and source in self.alternates:  # the broker tries the alternate exchange instead
                pending.append(self.alternates[source])
            for b in matched:
                if b.to_exchange:
                    pending.append(b.destination)
                elif b.destination in self.queues:
                    found.setdefault(b.destination, self.queues[b.destination])
        return list(found.values())

    def _enqueue(self, queue: Queue, msg: Message, now: float) -> bool:
        """Append `msg` to `queue`, applying `x-max-length`; False when the queue refused it (a nack)."""
        limit = queue.arguments.get("x-max-length")
        if limit is not None and len(queue.messages) >= int(limit):
            overflow = queue.arguments.get("x-overflow", "drop-head")
            if overflow == "reject-publish":
                return False
            if overflow == "reject-publish-dlx":
                self.dead_letter(queue, msg, "maxlen", now)
                return False
            if queue.messages:  # drop-head: the oldest goes (dead-lettered when the queue says where)
                self.dead_letter(queue, queue.messages.popleft(), "maxlen", now)
        queue.messages.append(msg)
        return True

    # -- settling ------------------------------------------------------------------------------------

    def requeue(self, queue: Queue, msg: Message, now: float) -> None:
        """A delivery ended without ack (rejected with requeue, or its channel closed): back to the head.

        A quorum queue counts it, and dead-letters it past `x-delivery-limit`.
        """
        msg.redelivered = True
        if queue.quorum:
            msg.returns += 1
            limit = queue.arguments.get("x-delivery-limit")
            if limit is not None and msg.returns > int(limit):
                self.dead_letter(queue, msg, "delivery_limit", now)
                return
        queue.messages.appendleft(msg)

    def dead_letter(self, queue: Queue, msg: Message, reason: str, now: float) -> None:
        """What the broker does with a message that dies in `queue`: to its dead-letter exchange, or gone."""
        dlx = queue.arguments.get("x-dead-letter-exchange")
        if dlx is None:
            self.dropped.append((msg, f"{reason} in {queue.name!r}, which has no dead-letter exchange"))
            return
        key = queue.arguments.get("x-dead-letter-routing-key") or msg.routing_key
        props = _copy(msg.properties)
        headers = _with_death(props.headers or {}, queue.name, reason, msg, now)
        props.headers = headers
        if reason == "expired":
            props.expiration = None  # else it would expire again at once in the next queue
        targets = self.route(dlx, key)
        if not targets:
            self.dropped.append((msg, f"{reason} in {queue.name!r}: dead-letter exchange {dlx!r} routes it nowhere"))
        for target in targets:
            if reason != "rejected" and _is_cycle(target.name, headers["x-death"]):
                why = f"dead-letter cycle: it died in {target.name!r} before, with no reject since"
                self.dropped.append((msg, why))
                continue
            self._enqueue(target, Message(msg.body, _copy(props), dlx, key, target.name, now), now)

    # -- time ----------------------------------------------------------------------------------------

    def next_expiry(self) -> float | None:
        """The earliest time a message at the head of a queue expires, or None."""
        times = [t for q in self.queues.values() if q.messages and (t := q.expires_at(q.messages[0])) is not None]
        return min(times) if times else None

    def expire(self, now: float) -> None:
        """Expire, in time order, every head that is due by `now` (each copy it makes arrives at its expiry
        time), then delete the queues left unused past their `x-expires`."""
        while True:
            due: tuple[float, Queue] | None = None
            for queue in self.queues.values():
                if queue.messages and (t := queue.expires_at(queue.messages[0])) is not None and t <= now:
                    if due is None or t < due[0]:
                        due = (t, queue)
            if due is None:
                break
            at, queue = due
            self.dead_letter(queue, queue.messages.popleft(), "expired", at)
        for name, queue in list(self.queues.items()):
            unused_ms = queue.arguments.get("x-expires")
            if unused_ms is not None and queue.declared_at + int(unused_ms) / 1000.0 <= now:
                del self.queues[name]


def _copy(props: Basic.Properties) -> Basic.Properties:
    """A copy of `props` whose headers can change without touching the original's."""
    new = copy.copy(props)
    new.headers = dict(props.headers) if props.headers is not None else None
    return new


def _with_death(headers: dict[str, Any], queue: str, reason: str, msg: Message, now: float) -> dict[str, Any]:
    """`headers` with this death recorded as the broker records it (an entry per queue and reason, newest first)."""
    deaths: list[dict[str, Any]] = [dict(d) for d in headers.get("x-death") or []]
    for i, death in enumerate(deaths):
        if death.get("queue") == queue and death.get("reason") == reason:
            death["count"] = int(death.get("count", 1)) + 1
            death["time"] = _timestamp(now)
            deaths.insert(0, deaths.pop(i))
            break
    else:
        deaths.insert(
            0,
            {
                "count": 1,
                "reason": reason,
                "queue": queue,
                "time": _timestamp(now),
                "exchange": msg.exchange,
                "routing-keys": [msg.routing_key],
            },
        )
    headers = {**headers, "x-death": deaths}
    headers.setdefault("x-first-death-reason", reason)
    headers.setdefault("x-first-death-queue", queue)
    headers.setdefault("x-first-death-exchange", msg.exchange)
    return headers


def _is_cycle(queue: str, deaths: list[dict[str, Any]]) -> bool:
    """RabbitMQ's rule (rabbit_dead_letter): `queue` is in the deaths, and none up to it was a reject."""
    for death in deaths:
        if death.get("reason") == "rejected":
            return False
        if death.get("queue") == queue:
            return True
    return False


def _timestamp(epoch_s: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(int(epoch_s), datetime.UTC)


def _matches(kind: str, pattern: str, routing_key: str) -> bool:
    if kind in ("fanout", HASH_EXCHANGE_TYPE):  # a hash exchange's binding key is a weight, chosen in `route`
        return True
    if kind == "topic":
        return _topic(tuple(pattern.split(".")), tuple(routing_key.split(".")))
    return pattern == routing_key


@functools.lru_cache(maxsize=4096)
def _topic(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    """AMQP topic matching: `*` is one word, `#` zero or more."""
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_topic(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head == "*" or head == words[0]) and _topic(rest, words[1:])
