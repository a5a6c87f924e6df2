"""The consuming side of a child: connect, declare (or check) the topology, qos, consume, drain, reconnect.

One connection and channel at a time, with a per-consumer prefetch (never global) and an `Acker`
that dies with its channel: a tag from before a reconnect is never acked on the new one. When the
connection drops, the session is reopened with back-off; a refused login or permission is retried
`ACCESS_ATTEMPTS` times (a user being created right now), then ends the worker with `EXIT_CONFIG`,
as does a topology that disagrees with the code or that the broker's version cannot take.

Draining (the child stops or retires): cancel the consumers, let deliveries that came before the
cancel-ok arrive, release the held acks; when retiring, wait until everything held is settled (or a
stop signal comes); hand back to the queue what has not started; wait at most `shutdown_timeout_s`
for what still runs; send the last acks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import aiormq
import aiormq.abc
from aiormq.abc import DeliveredMessage

from rabbittask.amqp.connect import CONNECTION_ERRORS, access_refused, cancelled_here, connect
from rabbittask.amqp.link import close_when_cancelled
from rabbittask.amqp.server import Server
from rabbittask.delays import delay_names
from rabbittask.errors import AccessRefused, ConfigError, ConnectionLost, PublishError, TopologyMismatch
from rabbittask.partitions import PARTITION_PREFETCH, home_partitions, partition_queues
from rabbittask.publish.declare import declare_for_worker
from rabbittask.settings import mask_url
from rabbittask.worker.acks import Acker
from rabbittask.worker.exits import EXIT_CONFIG, EXIT_OK

if TYPE_CHECKING:
    from rabbittask.app import App
    from rabbittask.worker.retirement import Lifecycle, Retirement
    from rabbittask.worker.settle import InFlight, Settler

log = logging.getLogger(__name__)

RECONNECT_ERRORS: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    ConnectionLost,
    PublishError,
    aiormq.exceptions.AMQPError,
    asyncio.CancelledError,  # aiormq cancels its reader when heartbeats stop
)
ACCESS_ATTEMPTS = 3  # connections tried before a refused login or permission ends the worker
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
STANDBY_DELAY_S = 1.0  # before a child subscribes to the partitions of the others (see `_stand_by`)


class Session:
    """Consumes `queues` into `on_message` until the lifecycle leaves RUNNING; `run()` returns an exit code."""

    def __init__(
        self,
        app: App,
        queues: list[str],
        on_message: Callable[[DeliveredMessage], Coroutine[Any, Any, None]],
        *,
        prefetch: int,
        threads: int,
        lifecycle: Lifecycle,
        retirement: Retirement,
        settler: Settler,
        flight: InFlight,
        unstarted: Callable[[], list[DeliveredMessage]],
        shutdown_timeout_s: float,
        on_ready: Callable[[], None] | None = None,
        on_consuming: Callable[[bool], None] | None = None,
        partition_slot: tuple[int, int] = (0, 1),
        before_consume: Callable[[], Coroutine[Any, Any, None]] | None = None,
        consumer_timeouts: Mapping[str, float] | None = None,
    ) -> None:
        self.app = app
        self.partition_slot = partition_slot  # (this child's index, children of the worker): its home partitions
        self.before_consume = before_consume  # e.g. read the revocations first (control.py), while it declares
        self.queues = queues
        # Queue (and each of its partitions) -> the consumer timeout its consumers ask for (timeouts.py)
        self._timeouts = {
            name: timeout_s
            for q, timeout_s in (consumer_timeouts or {}).items()
            for name in {q, *partition_queues(app.queues[q])}
        }
        self._consume_arguments: dict[str, dict[str, Any]] = {}  # by queue, for the broker of this session
        self.prefetch = prefetch
        self.reconnects = 0
        self._on_message = on_message
        self._threads = threads
        self._lifecycle = lifecycle
        self._retirement = retirement
        self._settler = settler
        self._flight = flight
        self._unstarted = unstarted
        self._shutdown_timeout_s = shutdown_timeout_s
        self._on_ready = on_ready
        self._on_consuming = on_consuming
        self.consumed = False  # until the first consume: a failure before it is no connection "lost"
        self._channel: aiormq.abc.AbstractChannel | None = None  # while consuming
        self._plain: list[str] = []  # the queues consumed at the (adaptive) prefetch: not the partitions
        self._tags: list[str] = []  # their consumers on the current channel
        self._consuming_prefetch = 0  # the prefetch they were created with
        self._resizing: asyncio.Task[None] | None = None

    async def run(self) -> int:
        """Run sessions until a stop; back off on connection loss, give up on configuration errors."""
        backoff_s = BACKOFF_FIRST_S
        refusals = 0
        while self._lifecycle.running:
            try:
                await self._consume()
                backoff_s = BACKOFF_FIRST_S
            except (TopologyMismatch, ConfigError) as e:  # ConfigError: a queue this broker cannot take
                log.error("%s", e)
                return EXIT_CONFIG
            except AccessRefused as e:
                # A refused login or permission is a configuration error, not an outage: retry a
                # few times (a user being created right now), then exit so nobody loops on it.
                refusals += 1
                if refusals >= ACCESS_ATTEMPTS or not self._lifecycle.running:
                    log.error("%s; giving up after %d attempt(s) (exit status %d)", e, refusals, EXIT_CONFIG)
                    return EXIT_CONFIG
                log.error("%s; attempt %d of %d, retrying in %.1f s", e, refusals, ACCESS_ATTEMPTS, backoff_s)
                await self._pause(backoff_s)
                backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)
            except RECONNECT_ERRORS as e:
                refusals = 0
                self.reconnects += 1
                if cancelled_here(e):
                    raise  # we are being cancelled; aiormq's internal cancellations are connection losses
                if not self._lifecycle.running:
                    break
                _explain_consumer_timeout(e)
                log.warning(
                    "%s (%s); reconnecting in %.1f s",
                    "broker connection lost" if self.consumed else "no connection to the broker yet",
                    mask_url(str(e) or type(e).__name__),
                    backoff_s,
                )
                await self._pause(backoff_s)
                backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)
        return EXIT_OK

    async def _pause(self, seconds: float) -> None:
        """Sleep `seconds`, or less if a stop is requested meanwhile."""
        try:
            await asyncio.wait_for(self._lifecycle.stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def _consume(self) -> None:
        connection = await connect(self.app.settings, f"worker q={','.join(self.queues)}")
        specs = [self.app.queues[q] for q in self.queues]
        plain = [s.name for s in specs if not s.partitions]
        partitioned = [name for s in specs if s.partitions for name in partition_queues(s)]
        self._consume_arguments = consume_arguments(self._timeouts, Server.of(connection.server_properties))
        try:
            channel = await connection.channel(publisher_confirms=False)
            try:
                if self.app.settings.declare_topology:  # the delay ladder only when it is not all there
                    decls, ladder = self.app.declarations(self.queues), delay_names(self.app.settings.exchange)
                    channel = await declare_for_worker(connection, channel, decls, ladder)
                else:  # pre-applied by an admin: the worker needs no configure permission
                    await check_queues(channel, [*plain, *partitioned])
                prefetch = self._retirement.prefetch(max(1, self.prefetch))  # capped by a max-tasks budget
                if self.before_consume is not None:
                    await self.before_consume()
                    if not self._lifecycle.running:
                        return  # stopped before it took a message
                close_when_cancelled(channel, ", ".join(self.queues))  # a classic queue's node went down
                acker = self._settler.acker = Acker(channel, prefetch)
                self._plain = plain
                self._tags = await self._consumers(channel, prefetch)  # re-made when the prefetch adapts
                self._channel, self._consuming_prefetch = channel, prefetch
                tags, standby = await self._subscribe_partitions(channel, acker, partitioned)
            except aiormq.exceptions.ChannelAccessRefused as e:
                raise access_refused(self.app.settings, e, f"declare or consume {', '.join(self.queues)}") from None
            shown = plain + [
                f"{s.name} ({s.partitions} partitions, 1 message each at a time)" for s in specs if s.partitions
            ]
            log.info("consuming from %s (prefetch %d, %d thread(s))", ", ".join(shown), prefetch, self._threads)
            self.consumed = True
            if self._on_ready is not None:
                self._on_ready()
                self._on_ready = None
            if self._on_consuming is not None:
                self._on_consuming(True)
            later = asyncio.ensure_future(self._stand_by(channel, standby, tags))
            stop = asyncio.ensure_future(self._lifecycle.stopping.wait())
            await asyncio.wait([stop, channel.closing], return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            later.cancel()
            if self._resizing is not None:  # it stops after its step: then the tags are the live consumers
                await asyncio.wait([self._resizing])
            if not self._lifecycle.running and not channel.is_closed:
                await self._drain(channel, [*self._tags, *tags])
            elif channel.is_closed or channel.closing.done():
                raise ConnectionLost(f"channel closed: {_close_reason(channel.closing)}")
        finally:
            self._settler.acker = None
            self._channel = None
            if self._on_consuming is not None:
                self._on_consuming(False)
            if not connection.is_closed:
                await connection.close()

    async def _subscribe_partitions(
        self, channel: aiormq.abc.AbstractChannel, acker: Acker, partitioned: list[str]
    ) -> tuple[list[str], list[str]]:
        """Consume this child's home partitions at a prefetch of 1 (never adapted); (tags, standby partitions)."""
        home, standby = home_partitions(partitioned, self.partition_slot)
        if not partitioned:
            return [], standby
        # basic.qos without global sets the prefetch of the consumers started after it on the channel.
        await channel.basic_qos(prefetch_count=PARTITION_PREFETCH)
        for q in home:
            acker.urgent_consumers[await self._subscribe(channel, q)] = q
        return list(acker.urgent_consumers), standby

    async def _subscribe(self, channel: aiormq.abc.AbstractChannel, queue: str) -> str:
        """Consume `queue` with the prefetch set last on `channel`; the consumer tag."""
        ok = await channel.basic_consume(queue, self._on_message, arguments=self._consume_arguments.get(queue))
        return ok.consumer_tag or ""

    async def _stand_by(self, channel: aiormq.abc.AbstractChannel, queues: list[str], tags: list[str]) -> None:
        """After `STANDBY_DELAY_S`, consume the partitions of the other children as their single-active standby.

        A consumer that subscribes first is the active one: the children of a worker each take their home
        partitions at once and the others a moment later, so the partitions are spread over the children
        and every child can take over any partition whose active consumer died.
        """
        if not queues:
            return
        await asyncio.sleep(STANDBY_DELAY_S)
        try:
            for q in queues:
                if not self._lifecycle.running or channel.is_closed:
                    return
                tag = await self._subscribe(channel, q)
                tags.append(tag)
                if self._settler.acker is not None:
                    self._settler.acker.urgent_consumers[tag] = q
        except RECONNECT_ERRORS as e:  # the session ends and reconnects anyway
            log.debug("standby consumers not started: %s", e)

    async def _consumers(self, channel: aiormq.abc.AbstractChannel, prefetch: int) -> list[str]:
        """Consume every queue with `prefetch` (per consumer, never global; 0: none); the consumer tags."""
        if prefetch < 1:  # basic.qos 0 means unlimited: 0 here means not consuming
            return []
        tags: list[str] = []
        if not self._plain:
            return tags
        await channel.basic_qos(prefetch_count=prefetch)
        for q in self._plain:  # partitions keep their prefetch of 1: not re-made
            tags.append(await self._subscribe(channel, q))
        return tags

    def resize(self, prefetch: int) -> None:
        """Consume with `prefetch` from now on: re-consume, as `basic.qos` binds only consumers made after it."""
        self.prefetch = prefetch
        if self._resizing is None and self._channel is not None:
            self._resizing = asyncio.ensure_future(self._resize())

    async def _resize(self) -> None:
        try:
            while (channel := self._channel) is not None and self._lifecycle.running and not channel.is_closed:
                prefetch = self.prefetch
                if prefetch == self._consuming_prefetch:
                    return
                # The new consumers first, then the old ones go: what they hold stays valid on the channel.
                tags = await self._consumers(channel, prefetch)
                old, self._tags, self._consuming_prefetch = self._tags, tags, prefetch
                for tag in old:
                    await channel.basic_cancel(tag)
                if (acker := self._settler.acker) is not None and prefetch:
                    acker.window(prefetch)
                log.debug("consuming with prefetch %d", prefetch)
        except RECONNECT_ERRORS as e:  # the session sees the channel close and reconnects at the new prefetch
            log.debug("re-consuming with prefetch %d failed: %s", self.prefetch, e)
        finally:
            self._resizing = None

    async def _drain(self, channel: aiormq.abc.AbstractChannel, consumer_tags: list[str]) -> None:
        for tag in consumer_tags:
            await channel.basic_cancel(tag)
        await asyncio.sleep(0)  # deliveries that came before the cancel-ok run their callbacks first
        acker = self._settler.acker
        assert acker is not None
        acker.release()  # acks held back until the broker stopped sending
        flight, handing_back = self._flight, self._lifecycle.handing_back
        if not handing_back.is_set():  # retiring: finish all it holds, unless a stop signal comes
            idle = asyncio.ensure_future(flight.idle.wait())
            shutdown = asyncio.ensure_future(handing_back.wait())
            await asyncio.wait([idle, shutdown], return_when=asyncio.FIRST_COMPLETED)
            idle.cancel()
            shutdown.cancel()
        unstarted = self._unstarted()  # prefetched messages that have not started go straight back
        for message in unstarted:
            self._settler.hand_back(message)
        if unstarted:
            log.info("handed %d unstarted message(s) back to the queue", len(unstarted))
        try:
            await asyncio.wait_for(flight.idle.wait(), self._shutdown_timeout_s)
        except TimeoutError:
            log.warning(
                "%d task(s) still running after %.0f s; they go back to the queue",
                flight.count,
                self._shutdown_timeout_s,
            )
        await acker.drain()


async def check_queues(channel: aiormq.abc.AbstractChannel, queues: Sequence[str]) -> None:
    """Passively check that `queues` exist; raise `TopologyMismatch` naming the first one missing."""
    for q in queues:
        try:
            await channel.queue_declare(q, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise TopologyMismatch(
                f"queue {q!r} does not exist and declare_topology is False: apply the topology first "
                "(`rabbittask topology apply -A ...` as a user with configure permission)"
            ) from None


def consume_arguments(timeouts: Mapping[str, float], server: Server) -> dict[str, dict[str, Any]]:
    """`basic.consume` arguments by queue: a consumer timeout of its own where the broker takes one (3.11.15+).

    On an older broker there is nothing to ask: the start-up check has warned (cli/worker.py).
    """
    if not server.consumer_timeout_per_consumer:
        return {}
    return {q: {"x-consumer-timeout": int(timeout_s * 1000)} for q, timeout_s in timeouts.items()}


def _close_reason(closing: asyncio.Future[Any]) -> str:
    """Why a channel or connection closed, from its `closing` future, without raising."""
    if not closing.done() or closing.cancelled():
        return "connection lost"
    try:
        exc = closing.exception()
    except BaseException as e:  # noqa: BLE001 - aiormq may store a CancelledError here
        exc = e
    return "closed" if exc is None else (str(exc) or type(exc).__name__)


def _explain_consumer_timeout(exc: BaseException) -> None:
    """Say what to change when the broker closed the channel for its consumer_timeout."""
    if "acknowledgement" in str(exc):  # 406 "delivery acknowledgement on channel N timed out"
        log.error(
            "the broker's consumer_timeout closed the channel: a message was held unacked longer than it "
            "allows, and what the channel held is redelivered. Raise consumer_timeout in rabbitmq.conf, or "
            "lower --prefetch and the tasks' time limits"
        )
