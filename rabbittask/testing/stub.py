"""`StubBroker`: an app's broker in memory, and the worker's own stages to run what it holds.

    with StubBroker(app) as stub:
        send_email.apply_async(("ada@example.com",), countdown=3600)
        stub.run_until_idle()          # nothing is due: the message waits in the delay ladder
        stub.advance(3600)             # the virtual clock moves; the message reaches "emails"
        stub.run_until_idle()          # admitted, run and settled by the worker's code
        assert stub.dead_letters("emails") == []

While it is entered, every send of the app (`.delay()`, `apply_async`, batches, `.call()`) goes into
its `VirtualHost` (vhost.py: the app's declarations, routed and expired as RabbitMQ does) instead of
the network; results go to a `MemoryBackend`. `run_until_idle()` delivers ready messages one at a
time to `Stages` (stages.py: `Redeliveries`, `execute`, `Settler`), the worker's own code.

Time is virtual: `now()` is the wall clock plus what `advance()` added, and the worker's admission
reads it too, so `expires` and the ladder agree. Nothing becomes due before its time.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

from aiormq.abc import DeliveredMessage
from pamqp import frame
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from rabbittask.amqp.properties import properties
from rabbittask.delays import DELAY_BASE_MS, DELAY_LEVELS, delay_names, delay_ttl_ms, delivered_queue
from rabbittask.errors import PublishNotConfirmed
from rabbittask.message import X_DELIVERY_COUNT, Outgoing, missing_exchange, publish_target
from rabbittask.partitions import partition_queues
from rabbittask.results.record import decode_result
from rabbittask.results.rpc import REPLY_TO, reply_timeout
from rabbittask.testing.memory import MemoryBackend
from rabbittask.testing.stages import Stages, StubChannel
from rabbittask.testing.vhost import Message, Queue, Routed, VirtualHost
from rabbittask.topology import Declaration, dlq_name

if TYPE_CHECKING:
    from rabbittask.app import App
    from rabbittask.clients import LocalBroker

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_DELIVERIES = 10_000  # per run: a task that re-sends itself forever stops the test instead of hanging it


class StubBroker:
    """The app's broker in memory, with the worker's own stages to run what it holds (see the module doc).

    Use as a context manager, or `start()` and `stop()`. `stub.queue(name)`, `stub.dead_letters(name)`
    and `stub.scheduled()` show what it holds; `stub.dropped` what the broker would drop silently.
    """

    def __init__(self, app: App) -> None:
        self.app = app
        self.vhost = VirtualHost(app.declarations())
        self._queues_declared = len(app.queues)
        self.channel = StubChannel(self)
        self.memory = MemoryBackend(self)
        self.deliveries = 0  # messages delivered to the stages so far
        self._offset_s = 0.0
        self._lock = threading.RLock()
        self._tags = itertools.count(1)
        self._unacked: dict[int, tuple[Queue, Message]] = {}
        self._turn = 0  # which queue delivers next: consumers of several queues take turns
        self._previous: LocalBroker | None = None
        self._started = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} app={self.app.name} ready={sum(len(q) for q in self._ready().values())}>"

    # -- in place of the network ---------------------------------------------------------------------

    def start(self) -> Self:
        """Take every send of the app from now on (until `stop()`)."""
        if not self._started:
            self._previous, self.app.clients.local = self.app.clients.local, self
            self._started = True
        return self

    def stop(self) -> None:
        """Give the app its network back (or the stand-in that was there before)."""
        if self._started:
            self.app.clients.local = self._previous
            self._started = False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    @property
    def backend(self) -> MemoryBackend:
        """Where results are stored while the stub runs (whatever the app's `result_backend` says)."""
        return self.memory

    def send(self, msg: Outgoing) -> None:
        """Take a message the app publishes (what `.delay()` ends in)."""
        self.publish(msg)

    async def asend(self, msg: Outgoing) -> None:
        """Async twin of `send`."""
        self.publish(msg)

    def call(self, msg: Outgoing, timeout_s: float) -> Any:
        """`.call()`: publish the request, run the queues (and the clock, up to `timeout_s`) until its reply."""
        self._request(msg)
        self._drive(lambda: self._run(lambda: msg.message_id in self.vhost.replies, advance=True, within_s=timeout_s))
        return self._reply(msg, timeout_s)

    async def acall(self, msg: Outgoing, timeout_s: float) -> Any:
        """Async twin of `call`."""
        self._request(msg)
        await self._run(lambda: msg.message_id in self.vhost.replies, advance=True, within_s=timeout_s)
        return self._reply(msg, timeout_s)

    def _request(self, msg: Outgoing) -> None:
        msg.reply_to, msg.correlation_id = REPLY_TO, msg.message_id
        self.publish(msg)

    def _reply(self, msg: Outgoing, timeout_s: float) -> Any:
        with self._lock:
            body = self.vhost.replies.pop(msg.message_id, None)
        if body is None:
            raise reply_timeout(msg, timeout_s)
        return decode_result(body)

    def publish(self, msg: Outgoing) -> None:
        """Publish `msg` as a client would (the ladder for a delay); raise what the broker's answer means."""
        exchange, routing_key = publish_target(msg, self.app.settings.exchange)
        routed = self.route(exchange, routing_key, msg.body, properties(msg), mandatory=msg.mandatory)
        if routed == "no exchange":
            raise missing_exchange(msg, exchange, "the stub broker")
        if routed == "unroutable":
            raise PublishNotConfirmed(
                f"task {msg.task_name!r} (id {msg.message_id}) was returned by the broker: no queue is bound "
                f"to routing key {msg.routing_key!r} on exchange {exchange!r}"
            )
        if routed == "nacked":
            raise PublishNotConfirmed(
                f"task {msg.task_name!r} (id {msg.message_id}) was rejected by the broker (nack): "
                f"queue {msg.routing_key!r} is full (x-overflow=reject-publish)"
            )

    def route(
        self, exchange: str, routing_key: str, body: bytes, props: Basic.Properties, *, mandatory: bool
    ) -> Routed:
        """Publish a raw message into the vhost (properties through the wire codec); what the broker answered."""
        props = on_the_wire(props, len(body))
        with self._lock:
            self._declare_new_queues()
            self.vhost.expire(self.now())
            return self.vhost.publish(exchange, routing_key, body, props, now=self.now(), mandatory=mandatory)

    def declare(self, decl: Declaration) -> None:
        """Declare a queue, exchange or binding now (as a client's declare would)."""
        with self._lock:
            self.vhost.expire(self.now())
            self.vhost.declare(decl, self.now())

    def _declare_new_queues(self) -> None:
        """Declare what tasks declared since the stub started (an app made with `eager=True` has none at first)."""
        if len(self.app.queues) != self._queues_declared:
            for decl in self.app.declarations():
                self.vhost.declare(decl)
            self._queues_declared = len(self.app.queues)

    # -- the clock -----------------------------------------------------------------------------------

    def now(self) -> float:
        """The stub's time, epoch seconds: the wall clock plus what `advance()` added."""
        return time.time() + self._offset_s

    def advance(self, seconds: float) -> None:
        """Move the clock forward: what is due by then (delays, TTLs) moves on; nothing runs until asked."""
        if seconds < 0:
            raise ValueError(f"the clock only moves forward, got {seconds!r}")
        self._offset_s += seconds
        with self._lock:
            self.vhost.expire(self.now())

    def _advance_to(self, when: float) -> None:
        self._offset_s += max(0.0, when - self.now())
        with self._lock:
            self.vhost.expire(max(when, self.now()))

    # -- running -------------------------------------------------------------------------------------

    def run_until_idle(
        self, *, advance: bool = False, queues: Iterable[str] | None = None, max_deliveries: int = MAX_DELIVERIES
    ) -> int:
        """Run what is ready (and what that sends) until nothing is; return how many messages ran.

        `advance=True` also moves the clock to each next due message (retry back-offs, countdowns),
        until nothing is left anywhere. `queues`: consume only these (default: all the app's task queues).
        """
        return self._drive(lambda: self._run(None, advance=advance, queues=queues, max_deliveries=max_deliveries))

    async def arun_until_idle(
        self, *, advance: bool = False, queues: Iterable[str] | None = None, max_deliveries: int = MAX_DELIVERIES
    ) -> int:
        """Async twin of `run_until_idle` (async tasks run on the caller's event loop)."""
        return await self._run(None, advance=advance, queues=queues, max_deliveries=max_deliveries)

    def run_until(self, done: Callable[[], bool], within_s: float | None) -> bool:
        """Run (moving the clock, at most `within_s` seconds; None: no limit) until `done()`; return `done()`."""
        self._drive(lambda: self._run(done, advance=True, within_s=within_s))
        return done()

    async def arun_until(self, done: Callable[[], bool], within_s: float | None) -> bool:
        """Async twin of `run_until`."""
        await self._run(done, advance=True, within_s=within_s)
        return done()

    async def _run(
        self,
        done: Callable[[], bool] | None,
        *,
        advance: bool,
        within_s: float | None = None,
        queues: Iterable[str] | None = None,
        max_deliveries: int = MAX_DELIVERIES,
    ) -> int:
        with self._lock:
            self._declare_new_queues()
        stages = Stages(self)
        names = list(queues) if queues is not None else sorted(self.app.queues)
        specs = self.app.queues
        consumed = [p for q in names for p in (partition_queues(specs[q]) if q in specs else [q])]
        deadline = None if within_s is None else self.now() + within_s
        ran = 0
        while done is None or not done():
            message = self._deliver(consumed)
            if message is None:
                with self._lock:
                    due = self.vhost.next_expiry()
                if not advance or due is None or (deadline is not None and due > deadline):
                    break
                self._advance_to(due)
                continue
            ran += 1
            if ran > max_deliveries:
                raise RuntimeError(
                    f"the stub ran {max_deliveries} messages and more keep coming: a task that sends itself "
                    "forever? Pass max_deliveries= to allow more"
                )
            await stages.run(message)
        return ran

    def _deliver(self, consumed: list[str]) -> DeliveredMessage | None:
        """The next delivery, taking turns between the consumed queues; None when none has a ready message."""
        with self._lock:
            self.vhost.expire(self.now())
            for i in range(len(consumed)):
                queue = self.vhost.queues.get(consumed[(self._turn + i) % len(consumed)])
                msg = queue.take() if queue is not None else None
                if queue is not None and msg is not None:
                    self._turn = (self._turn + i + 1) % len(consumed)
                    return self._delivery(queue, msg)
        return None

    def _delivery(self, queue: Queue, msg: Message) -> DeliveredMessage:
        tag = next(self._tags)
        self._unacked[tag] = (queue, msg)
        self.deliveries += 1
        props = msg.properties.__class__(**{k: getattr(msg.properties, k) for k in _PROPERTIES})
        if queue.quorum and msg.returns:
            props.headers = {**(props.headers or {}), X_DELIVERY_COUNT: msg.returns}
        elif props.headers is not None:
            props.headers = dict(props.headers)
        deliver = Basic.Deliver("stub", tag, msg.redelivered, msg.exchange, msg.routing_key)
        return DeliveredMessage(deliver, ContentHeader(properties=props), msg.body, self.channel)  # type: ignore[arg-type]

    def lose_delivery(self, queue: str) -> Message | None:
        """Deliver the next message of `queue` and lose it unsettled, as a worker killed while running it does.

        The broker takes it back as redelivered (a quorum queue counts it, and dead-letters it past
        `x-delivery-limit`); the next run sees what a worker sees after a crash. None if `queue` is empty.
        """
        with self._lock:
            delivered = self._deliver([queue])
            if delivered is None:
                return None
            _, msg = self._unacked[delivered.delivery_tag or 0]
        self.reject(delivered.delivery_tag or 0, requeue=True)
        return msg

    def ack(self, tag: int) -> None:
        """The worker acked delivery `tag`: the message is gone."""
        with self._lock:
            self._unacked.pop(tag, None)

    def reject(self, tag: int, *, requeue: bool) -> None:
        """The worker rejected delivery `tag`: back to its queue, or dead-lettered by the broker."""
        with self._lock:
            held = self._unacked.pop(tag, None)
            if held is None:
                return
            queue, msg = held
            if requeue:
                self.vhost.requeue(queue, msg, self.now())
            else:
                self.vhost.dead_letter(queue, msg, "rejected", self.now())

    def _drive(self, run: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run a coroutine from sync code: on a loop of its own, or, if this thread runs a loop, in a helper thread."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
                return runner.run(run())
        with ThreadPoolExecutor(1, thread_name_prefix="rabbittask-stub") as pool:
            return pool.submit(lambda: asyncio.run(run())).result()

    # -- inspecting ----------------------------------------------------------------------------------

    def queue(self, name: str) -> list[Message]:
        """The messages ready in queue `name`, in order (a task queue, a DLQ, any queue of the app)."""
        with self._lock:
            self.vhost.expire(self.now())
            spec = self.app.queues.get(name)
            if spec is not None and spec.partitions:  # all its partitions' messages, partition by partition
                return [m for q in partition_queues(spec) for m in self.vhost.queues[q].messages]
            queue = self.vhost.queues.get(name)
            if queue is None:
                raise KeyError(f"queue {name!r} is not declared by app {self.app.name!r}: {sorted(self.app.queues)}")
            return list(queue.messages)

    def dead_letters(self, queue: str) -> list[Message]:
        """The messages in the dead-letter queue of task queue `queue` (`.reason`: the `rt-reason` header)."""
        return self.queue(dlq_name(queue))

    def scheduled(self, queue: str | None = None) -> list[tuple[float, Message]]:
        """Messages waiting in the delay ladder (for `queue`, or all), each with when it reaches its queue."""
        with self._lock:
            self.vhost.expire(self.now())
            ladder = delay_names(self.app.settings.exchange)
            waiting = []
            for q in self.vhost.queues.values():
                if q.name in ladder:
                    waiting += [(_due_at(q, m), m) for m in q.messages]
        exchange = self.app.settings.exchange
        found = [(t, m) for t, m in waiting if queue is None or _target(exchange, m) == queue]
        return sorted(found, key=lambda tm: tm[0])

    def _ready(self) -> dict[str, list[Message]]:
        return {name: list(self.vhost.queues[name].messages) for name in self.app.queues if name in self.vhost.queues}

    @property
    def dropped(self) -> list[tuple[Message, str]]:
        """Messages the broker would have dropped silently (a dead-letter cycle, nowhere to go), and why."""
        return list(self.vhost.dropped)


_PROPERTIES = tuple(Basic.Properties().__slots__)


def on_the_wire(props: Basic.Properties, body_size: int) -> Basic.Properties:
    """`props` as a consumer gets them: encoded into an AMQP frame and decoded (pamqp, aiormq's codec).

    A header value AMQP cannot carry raises here as it would in a real publish (`TypeError`).
    """
    _, _, header = frame.unmarshal(frame.marshal(ContentHeader(0, body_size, props), 1))
    assert isinstance(header, ContentHeader)
    return header.properties


def _target(exchange: str, msg: Message) -> str:
    """The task queue a message in the ladder is going to (the last word(s) of its routing key)."""
    return delivered_queue(exchange, f"{exchange}.delay", msg.routing_key)


def _due_at(queue: Queue, msg: Message) -> float:
    """When a message in a ladder level reaches its task queue: this level's expiry, then its lower set bits."""
    at = queue.expires_at(msg) or msg.enqueued_at
    level = (int(queue.arguments.get("x-message-ttl", 0)) // DELAY_BASE_MS).bit_length() - 1
    bits = msg.routing_key.split(".", DELAY_LEVELS)[:level]
    return at + sum(delay_ttl_ms(k) for k, bit in enumerate(bits) if bit == "1") / 1000.0
