"""Async publishing on aiormq (the protocol layer under aio-pika): confirms, mandatory, timeouts."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Iterable, Sequence
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiormq
import aiormq.abc
from pamqp.commands import Basic

from rabbittask.errors import PublishConnectionError, PublishError, PublishNotConfirmed, TopologyMismatch
from rabbittask.publish.declare import declare_async
from rabbittask.publish.outgoing import Outgoing, publish_target
from rabbittask.settings import Settings, host_port, mask_url
from rabbittask.topology import Declaration

log = logging.getLogger(__name__)

CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelClosed,
    ConnectionError,
    OSError,
    RuntimeError,  # aiormq raises RuntimeError("... closed") on a channel of a closed connection
)

# aiormq cancels pending calls (CancelledError) when their connection closes under them.
CHANNEL_OPEN_ERRORS: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    aiormq.exceptions.AMQPError,
    asyncio.CancelledError,
)


def amqp_url(settings: Settings, role: str) -> str:
    """The broker URL with heartbeat and connection name set, as aiormq reads them."""
    parts = urlsplit(settings.broker_url)
    query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
    query.setdefault("heartbeat", str(settings.heartbeat_s))
    query.setdefault("name", f"rabbittask {role} pid={os.getpid()}")
    return urlunsplit(parts._replace(query=urlencode(query)))


class _Connection(aiormq.Connection):
    # aiormq gives up on a silent broker after (heartbeat + 1) x 3 s; 1.5 keeps detection within
    # the AMQP norm of two missed heartbeats (checked every heartbeat / 2): 2 x heartbeat + 2 s.
    HEARTBEAT_GRACE_MULTIPLIER = 1.5  # type: ignore[assignment]


async def _open(url: str) -> aiormq.abc.AbstractConnection:
    connection = _Connection(url)
    await connection.connect()
    return connection


async def connect(settings: Settings, role: str) -> aiormq.abc.AbstractConnection:
    """Open an aiormq connection within the connect timeout, with clear errors."""
    where = host_port(settings.broker_url)
    try:
        return await asyncio.wait_for(_open(amqp_url(settings, role)), settings.connect_timeout_s)
    except TimeoutError:
        raise PublishConnectionError(
            f"cannot connect to the broker at {where}: no answer within {settings.connect_timeout_s:g} s"
        ) from None
    except aiormq.exceptions.ProbableAuthenticationError:
        raise PublishConnectionError(
            f"the broker at {where} refused the login: check the user and password in the broker URL"
        ) from None
    except CONNECTION_ERRORS + (aiormq.exceptions.AMQPError,) as e:
        raise PublishConnectionError(
            f"cannot connect to the broker at {where}: {mask_url(str(e) or type(e).__name__)} "
            "(is RabbitMQ running and reachable?)"
        ) from None


def properties(msg: Outgoing) -> aiormq.spec.Basic.Properties:
    """AMQP properties of a task message (see docs/protocol.md)."""
    return aiormq.spec.Basic.Properties(
        content_type=msg.content_type,
        delivery_mode=2,
        message_id=msg.message_id,
        correlation_id=msg.correlation_id,
        message_type=msg.task_name,
        priority=msg.priority,
        headers=msg.headers,
        reply_to=msg.reply_to,
    )


class AsyncPublisher:
    """An aiormq connection with a confirm channel, for one event loop."""

    def __init__(self, settings: Settings, decls: Sequence[Declaration], role: str = "publisher") -> None:
        self.settings = settings
        self.decls = decls
        self.role = role
        self._connection: aiormq.abc.AbstractConnection | None = None
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._lock = asyncio.Lock()

    async def channel(self) -> aiormq.abc.AbstractChannel:
        """The open confirm channel, connecting (and declaring the topology) first when needed."""
        if self._channel is not None and not self._channel.is_closed:
            return self._channel
        async with self._lock:
            if self._channel is None or self._channel.is_closed:
                await self.close()
                connection = await connect(self.settings, self.role)
                try:
                    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                    await declare_async(channel, self.decls)
                except TopologyMismatch:
                    await connection.close()
                    raise
                except CHANNEL_OPEN_ERRORS as e:
                    current = asyncio.current_task()
                    if isinstance(e, asyncio.CancelledError) and current is not None and current.cancelling():
                        raise
                    raise PublishConnectionError(
                        f"lost the connection to the broker at {host_port(self.settings.broker_url)} while "
                        f"opening a channel: {mask_url(str(e) or type(e).__name__)}"
                    ) from None
                self._connection, self._channel = connection, channel
        return self._channel

    async def publish(self, msg: Outgoing) -> None:
        """Publish one message and wait for its confirm; reopen a connection found closed, once."""
        was_open = self._channel is not None and not self._channel.is_closed
        try:
            await self._publish(await self.channel(), msg)
        except PublishConnectionError:
            if not was_open:
                raise
            log.info("publisher connection was closed; reopening once")
            await self.close()
            await self._publish(await self.channel(), msg)

    async def _publish(self, channel: aiormq.abc.AbstractChannel, msg: Outgoing) -> None:
        exchange, routing_key = publish_target(msg, self.settings.exchange)
        try:
            confirm = await channel.basic_publish(
                msg.body,
                exchange=exchange,
                routing_key=routing_key,
                properties=properties(msg),
                mandatory=msg.mandatory,
                timeout=self.settings.publish_timeout_s,
            )
        except aiormq.exceptions.PublishError:
            raise PublishNotConfirmed(
                f"task {msg.task_name!r} (id {msg.message_id}) was returned by the broker: no queue is bound "
                f"to routing key {msg.routing_key!r} on exchange {exchange!r}"
            ) from None
        except TimeoutError:
            raise PublishNotConfirmed(
                f"task {msg.task_name!r} (id {msg.message_id}) was not confirmed by the broker at "
                f"{host_port(self.settings.broker_url)} within {self.settings.publish_timeout_s:g} s; "
                "it may or may not have been enqueued (re-sending with the same message id is safe)"
            ) from None
        except CONNECTION_ERRORS as e:
            raise PublishConnectionError(
                f"lost the connection to the broker at {host_port(self.settings.broker_url)} while publishing "
                f"task {msg.task_name!r} (id {msg.message_id}): {mask_url(str(e) or type(e).__name__)}"
            ) from None
        if isinstance(confirm, Basic.Nack):
            raise PublishNotConfirmed(
                f"task {msg.task_name!r} (id {msg.message_id}) was rejected by the broker (nack): "
                f"queue {msg.routing_key!r} may be full (x-overflow=reject-publish) or unavailable"
            )

    async def publish_many(self, msgs: Iterable[Outgoing]) -> list[tuple[str, BaseException]]:
        """Publish with up to `batch_in_flight` confirms outstanding; return (id, error) of each failure."""
        pipeline = Pipeline(self, self.settings.batch_in_flight)
        pending = iter(msgs)
        for msg in pending:
            try:
                await pipeline.add(msg)
            except PublishError as e:  # no channel to publish on: this and the rest are not confirmed
                pipeline.failed += [(m.message_id, e) for m in (msg, *pending)]
                break
        await pipeline.wait()
        return pipeline.failed

    async def close(self) -> None:
        """Close the connection, ignoring errors of an already broken one."""
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and not connection.is_closed:
            try:
                await connection.close()
            except Exception:  # noqa: BLE001 - closing a broken connection must not mask the real error
                log.debug("closing a broken publisher connection failed", exc_info=True)


class Pipeline:
    """Publishes with at most `window` confirms outstanding and collects the failures."""

    def __init__(self, publisher: AsyncPublisher, window: int) -> None:
        self.publisher = publisher
        self.failed: list[tuple[str, BaseException]] = []
        self.count = 0
        self._slots = asyncio.Semaphore(window)
        self._pending: set[asyncio.Task[None]] = set()

    async def add(self, msg: Outgoing) -> None:
        """Start publishing `msg`; waits only while `window` confirms are outstanding."""
        await self._slots.acquire()
        channel = await self.publisher.channel()
        task = asyncio.ensure_future(self.publisher._publish(channel, msg))
        task.add_done_callback(functools.partial(self._done, msg.message_id))
        self._pending.add(task)
        self.count += 1

    def _done(self, message_id: str, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        self._slots.release()
        if task.cancelled():  # aiormq cancels the confirms outstanding on a channel that closed
            self.failed.append((message_id, PublishConnectionError("the channel closed before the confirm")))
        elif task.exception() is not None:
            self.failed.append((message_id, task.exception()))  # type: ignore[arg-type]

    async def wait(self) -> None:
        """Wait for every confirm."""
        if self._pending:
            await asyncio.wait(set(self._pending))
