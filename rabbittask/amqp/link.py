"""The one connection holder of each client library: open on demand, set up the main channel, close quietly.

`Link` (aiormq) serves the async publisher, the async RPC client, beat, `rabbittask status` and
the dashboard; `BlockingLink` (pika) serves the sync publisher and the sync RPC client. A holder
that finds its main channel closed (the broker closes a channel on a 404, a connection on a
heartbeat timeout) drops the whole connection and opens a new one on the next use: a fresh
connection is cheap next to reasoning about which half of an old one still works.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType

import aiormq
import aiormq.abc
import pika
from pika.adapters.blocking_connection import BlockingChannel

from rabbittask.amqp import blocking
from rabbittask.amqp.connect import CHANNEL_OPEN_ERRORS, access_refused, cancelled_here, connect
from rabbittask.errors import PublishAccessRefused, PublishConnectionError, RabbitTaskError
from rabbittask.settings import Settings, host_port, mask_url

log = logging.getLogger(__name__)

Setup = Callable[[aiormq.abc.AbstractChannel], Awaitable[None]]
"""Prepares a new main channel (declare the topology, start a reply consumer) before anyone uses it."""


def close_when_cancelled(
    channel: aiormq.abc.AbstractChannel, what: str, close: aiormq.abc.AbstractConnection | None = None
) -> None:
    """Close `channel` (or the connection `close`) when the broker cancels one of its consumers.

    The broker cancels a consumer whose queue went away: deleted, or a classic queue or stream member
    whose node is down. The channel stays open and nothing else says so: without this, a consumer
    waits forever, where closing lets whoever holds it reconnect and consume again.
    """
    target: aiormq.abc.AbstractChannel | aiormq.abc.AbstractConnection = close or channel

    def cancelled(frame: object) -> None:
        log.warning(
            "the broker cancelled the consumer of %s (its queue is gone or its node is down): reconnecting", what
        )
        if not target.is_closed:
            asyncio.ensure_future(target.close())  # not awaited here: the channel's own reader calls this

    channel.on_consumer_cancel_callbacks.add(cancelled)


async def close_quietly(connection: aiormq.abc.AbstractConnection, role: str = "") -> None:
    """Close an aiormq connection, ignoring the errors of an already broken one (they would mask the real one)."""
    if connection.is_closed:
        return
    try:
        await connection.close()
    except Exception:  # noqa: BLE001 - closing a broken connection must not mask the real error
        log.debug("closing a broken %s connection failed", role or "broker", exc_info=True)


class Link:
    """One aiormq connection and its main channel (publisher confirms on), for one event loop.

    `async with Link(settings, "status") as connection:` lends a connection for a moment.
    """

    def __init__(
        self,
        settings: Settings,
        role: str,
        *,
        setup: Setup | None = None,
        on_return_raises: bool = True,
        doing: str = "declare the app's topology",
    ) -> None:
        """`role` names the connection on the broker; `doing` says what `setup` does, in a refusal's error."""
        self.settings = settings
        self.role = role
        self._setup = setup
        self._on_return_raises = on_return_raises
        self._doing = doing
        self._connection: aiormq.abc.AbstractConnection | None = None
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._lock = asyncio.Lock()

    @property
    def connection(self) -> aiormq.abc.AbstractConnection | None:
        """The connection, if one was opened and not closed by `close()`."""
        return self._connection

    @property
    def is_open(self) -> bool:
        """True while the main channel is open (the next `channel()` returns at once)."""
        return self._channel is not None and not self._channel.is_closed

    async def connect(self) -> aiormq.abc.AbstractConnection:
        """The open connection, or a new one (for holders that open their own channels, like beat)."""
        if self._connection is None or self._connection.is_closed:
            self._connection = await connect(self.settings, self.role)
        return self._connection

    async def channel(self) -> aiormq.abc.AbstractChannel:
        """The open main channel; connects and sets up a new one first when needed."""
        channel = self._channel
        if channel is not None and not channel.is_closed:
            return channel
        async with self._lock:
            if self._channel is None or self._channel.is_closed:
                await self.close()
                self._connection, self._channel = await self._open()
            return self._channel

    async def _open(self) -> tuple[aiormq.abc.AbstractConnection, aiormq.abc.AbstractChannel]:
        connection = await connect(self.settings, self.role)
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=self._on_return_raises)
            if self._setup is not None:
                await self._setup(channel)
        except RabbitTaskError:  # said by the setup (an inequivalent queue): nothing to add
            await close_quietly(connection, self.role)
            raise
        except aiormq.exceptions.ChannelAccessRefused as e:
            await close_quietly(connection, self.role)
            raise access_refused(self.settings, e, self._doing, PublishAccessRefused) from None
        except CHANNEL_OPEN_ERRORS as e:
            if cancelled_here(e):
                raise  # the caller is being cancelled; aiormq's own cancellations mean a lost connection
            await close_quietly(connection, self.role)
            raise PublishConnectionError(
                f"lost the connection to the broker at {host_port(self.settings.broker_url)} while opening a "
                f"channel: {mask_url(str(e) or type(e).__name__)}"
            ) from None
        return connection, channel

    async def blocked(self) -> bool:
        """True while the broker blocks this connection from publishing (`connection.blocked`: a resource alarm)."""
        connection = self._connection
        if connection is None or connection.is_closed:
            return False
        try:  # aiormq keeps the state to itself; `ready()` waits while the connection is blocked
            await asyncio.wait_for(connection.ready(), 0.01)
        except TimeoutError:
            return True
        return False

    async def side_channel(self) -> aiormq.abc.AbstractChannel:
        """A new channel without confirms on this connection, for best-effort messages (events).

        Its own channel: an error there (say, a missing exchange) closes it alone, not the main channel.
        """
        await self.channel()
        assert self._connection is not None
        return await self._connection.channel(publisher_confirms=False)

    async def close(self) -> None:
        """Close the connection quietly; the next use opens a new one."""
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            await close_quietly(connection, self.role)

    async def __aenter__(self) -> aiormq.abc.AbstractConnection:
        return await self.connect()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class BlockingLink:
    """One pika connection and its channel. pika is not thread-safe: one thread at a time uses a link."""

    def __init__(self, settings: Settings, role: str, *, action: str = "connect to") -> None:
        """`action` names what the holder could not do, in errors ("cannot publish to the broker at ...")."""
        self.settings = settings
        self.role = role
        self.action = action
        self.connection: pika.BlockingConnection | None = None
        self.channel: BlockingChannel | None = None

    @property
    def is_open(self) -> bool:
        """True while both the channel and its connection are open."""
        channel, connection = self.channel, self.connection
        return channel is not None and channel.is_open and connection is not None and connection.is_open

    def open(self, setup: Callable[[BlockingChannel], None]) -> BlockingChannel:
        """Connect (dropping an earlier connection first), open a channel and run `setup` on it."""
        if self.connection is not None:
            self.close()  # a connection the broker dropped: its sockets are released before a new one opens
        connection = blocking.connect(self.settings, self.role, self.action)
        try:
            channel = connection.channel()
            setup(channel)
        except RabbitTaskError:  # said by the setup (an inequivalent queue): nothing to add
            blocking.close_quietly(connection)
            raise
        except Exception as e:  # noqa: BLE001 - pika raises connection-workflow errors outside AMQPError
            blocking.close_quietly(connection)
            raise blocking.connect_error(self.settings, e, self.action) from None
        self.connection, self.channel = connection, channel
        return channel

    def close(self, *, abort: bool = False) -> None:
        """Close the connection quietly (`abort`: without the close handshake a stuck broker never answers)."""
        connection, self.connection, self.channel = self.connection, None, None
        if connection is not None:
            blocking.close_quietly(connection, abort=abort)

    def forget(self) -> None:
        """Drop the connection without touching it: after a fork it is the parent's socket."""
        self.connection = self.channel = None
