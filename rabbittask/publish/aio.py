"""Async publishing on aiormq (the protocol layer under aio-pika): confirms, mandatory, timeouts."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from urllib.parse import unquote, urlencode, urlsplit, urlunsplit

import aiormq
import aiormq.abc
from pamqp.commands import Basic

from rabbittask import endpoints
from rabbittask.errors import AccessRefused, PublishConnectionError, PublishError, PublishNotConfirmed, TopologyMismatch
from rabbittask.message import Outgoing, missing_exchange, publish_target
from rabbittask.publish.declare import declare_async
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


def amqp_url(settings: Settings, role: str, url: str | None = None) -> str:
    """A broker URL (the first node's by default) with heartbeat and connection name set, as aiormq reads them."""
    parts = urlsplit(url or settings.broker_urls[0])
    query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
    query.setdefault("heartbeat", str(settings.heartbeat_s))
    query.setdefault("name", f"rabbittask {role} pid={os.getpid()}")
    return urlunsplit(parts._replace(query=urlencode(query)))


class _Connection(aiormq.Connection):
    # aiormq gives up on a silent broker after (heartbeat + 1) x 3 s; 1.5 keeps detection within
    # the AMQP norm of two missed heartbeats (checked every heartbeat / 2): 2 x heartbeat + 2 s.
    HEARTBEAT_GRACE_MULTIPLIER = 1.5  # type: ignore[assignment]


async def _open(url: str, context: ssl.SSLContext | None) -> aiormq.abc.AbstractConnection:
    connection = _Connection(url, context=context)
    await connection.connect()
    return connection


async def connect(settings: Settings, role: str) -> aiormq.abc.AbstractConnection:
    """Open an aiormq connection to the first node that accepts one (see endpoints.py), with clear errors.

    Each node gets the connect timeout. When no node accepts, a refused login or virtual host
    (`AccessRefused`) wins over the other failures: it is the one a person must act on.
    """
    failures: list[str] = []
    refused: AccessRefused | None = None
    for url in endpoints.candidates(settings):
        try:
            connection = await _connect_one(settings, url, role)
        except AccessRefused as e:
            refused = refused or e
            continue
        except PublishConnectionError as e:
            endpoints.unreachable(settings, url)
            failures.append(str(e))
            continue
        endpoints.connected(settings, url)
        return connection
    if refused is not None:
        raise refused
    if len(failures) == 1:
        raise PublishConnectionError(failures[0])
    raise PublishConnectionError(f"no node of the broker accepted a connection: {'; '.join(failures)}")


async def _connect_one(settings: Settings, url: str, role: str) -> aiormq.abc.AbstractConnection:
    where = host_port(url)
    try:
        context = endpoints.ssl_context(settings, url)
        return await asyncio.wait_for(_open(amqp_url(settings, role, url), context), settings.connect_timeout_s)
    except TimeoutError:
        raise PublishConnectionError(
            f"cannot connect to the broker at {where}: no answer within {settings.connect_timeout_s:g} s"
        ) from None
    except aiormq.exceptions.ProbableAuthenticationError:
        raise AccessRefused(
            f"the broker at {where} refused the login: check the user and password in the broker URL"
        ) from None
    except aiormq.exceptions.ConnectionNotAllowed as e:
        raise AccessRefused(
            f"the broker at {where} refused access to virtual host {vhost(url)!r}: check the vhost in the URL "
            f"and the user's permissions ({mask_url(_reply_text(e))})"
        ) from None
    except aiormq.exceptions.InvalidFrameError as e:
        if "Connection.Close" not in str(e):
            raise PublishConnectionError(f"cannot connect to the broker at {where}: {mask_url(str(e))}") from None
        # aiormq reports a close in answer to connection.open so; RabbitMQ sends it when the user may not use the vhost
        raise AccessRefused(
            f"the broker at {where} refused access to virtual host {vhost(url)!r}: check the vhost in the URL "
            "and the user's permissions"
        ) from None
    except CONNECTION_ERRORS + (aiormq.exceptions.AMQPError,) as e:
        why = endpoints.explain(settings, url, e)
        if why is None:
            why = f"cannot connect to the broker at {where}: {mask_url(str(e) or type(e).__name__)}"
            why += " (is RabbitMQ running and reachable?)"
        raise PublishConnectionError(why) from None


def access_refused(settings: Settings, e: BaseException, doing: str) -> AccessRefused:
    """The error for a 403 from the broker: which user could not do what, and the ways out."""
    user = urlsplit(settings.broker_urls[0]).username or "guest"
    return AccessRefused(
        f"the broker refused user {user!r} permission to {doing}: {mask_url(_reply_text(e))}. Grant the "
        "permission (docs/operations.md, least-privilege users), or apply the topology as an admin "
        "(`rabbittask topology apply`) and set declare_topology=False"
    )


def vhost(url: str) -> str:
    """The virtual host a URL names ("/" when it names none)."""
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def _reply_text(e: BaseException) -> str:
    return " ".join(str(a) for a in e.args) or type(e).__name__


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
        self.on_confirm: Callable[[float], None] | None = None  # seconds from publish to confirm (worker metrics)

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
                    if self.settings.declare_topology:
                        await declare_async(channel, self.decls)
                except TopologyMismatch:
                    await connection.close()
                    raise
                except aiormq.exceptions.ChannelAccessRefused as e:
                    await connection.close()
                    raise access_refused(self.settings, e, "declare the app's topology") from None
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

    async def side_channel(self) -> aiormq.abc.AbstractChannel:
        """A new channel without confirms on this publisher's connection, for best-effort messages (events).

        Its own channel: an error there (say, a missing exchange) closes it alone, not the confirm channel.
        """
        await self.channel()
        assert self._connection is not None
        return await self._connection.channel(publisher_confirms=False)

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

    async def _publish(self, channel: aiormq.abc.AbstractChannel, msg: Outgoing, *, timed: bool = True) -> None:
        exchange, routing_key = publish_target(msg, self.settings.exchange)
        started = time.perf_counter()
        try:
            confirm = await channel.basic_publish(
                msg.body,
                exchange=exchange,
                routing_key=routing_key,
                properties=properties(msg),
                mandatory=msg.mandatory,
                timeout=self.settings.publish_timeout_s if timed else None,
            )
        except aiormq.exceptions.ChannelAccessRefused as e:
            raise access_refused(self.settings, e, f"publish task {msg.task_name!r} to exchange {exchange!r}") from None
        except aiormq.exceptions.PublishError:
            raise PublishNotConfirmed(
                f"task {msg.task_name!r} (id {msg.message_id}) was returned by the broker: no queue is bound "
                f"to routing key {msg.routing_key!r} on exchange {exchange!r}"
            ) from None
        except aiormq.exceptions.DeliveryError:  # aiormq raises this for a basic.nack
            raise _nacked(msg) from None
        except aiormq.exceptions.ChannelNotFoundEntity as e:  # the broker closed the channel: the next publish reopens
            raise missing_exchange(msg, exchange, _reply_text(e)) from None
        except TimeoutError:
            raise self.not_confirmed(msg) from None
        except CONNECTION_ERRORS as e:
            raise PublishConnectionError(
                f"lost the connection to the broker at {host_port(self.settings.broker_url)} while publishing "
                f"task {msg.task_name!r} (id {msg.message_id}): {mask_url(str(e) or type(e).__name__)}"
            ) from None
        if isinstance(confirm, Basic.Nack):
            raise _nacked(msg)
        if self.on_confirm is not None:
            self.on_confirm(time.perf_counter() - started)

    def not_confirmed(self, msg: Outgoing) -> PublishNotConfirmed:
        """The error of a publish whose confirm did not come within `publish_timeout_s`."""
        return PublishNotConfirmed(
            f"task {msg.task_name!r} (id {msg.message_id}) was not confirmed by the broker at "
            f"{host_port(self.settings.broker_url)} within {self.settings.publish_timeout_s:g} s; "
            "it may or may not have been enqueued (re-sending with the same message id is safe)"
        )

    async def close(self) -> None:
        """Close the connection, ignoring errors of an already broken one."""
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and not connection.is_closed:
            try:
                await connection.close()
            except Exception:  # noqa: BLE001 - closing a broken connection must not mask the real error
                log.debug("closing a broken publisher connection failed", exc_info=True)


class Pipeline:
    """Publishes with at most `window` confirms outstanding and collects the failures.

    `timed=False` (the sync `app.batch()`, whose loop only runs while the caller hands it messages)
    counts the publish timeout only while the pipeline itself waits: for a free slot, and in `wait()`.
    """

    def __init__(self, publisher: AsyncPublisher, window: int, *, timed: bool = True) -> None:
        self.publisher = publisher
        self.failed: list[tuple[str, BaseException]] = []
        self.count = 0
        self._timed = timed
        self._slots = asyncio.Semaphore(window)
        self._pending: dict[asyncio.Task[None], Outgoing] = {}

    async def add(self, msg: Outgoing) -> None:
        """Start publishing `msg`; waits only while `window` confirms are outstanding."""
        if self._timed or not self._slots.locked():
            await self._slots.acquire()
        else:
            try:
                await asyncio.wait_for(self._slots.acquire(), self.publisher.settings.publish_timeout_s)
            except TimeoutError:
                raise self.publisher.not_confirmed(next(iter(self._pending.values()), msg)) from None
        channel = await self.publisher.channel()
        task = asyncio.ensure_future(self.publisher._publish(channel, msg, timed=self._timed))
        task.add_done_callback(self._done)
        self._pending[task] = msg
        self.count += 1

    async def add_all(self, msgs: Iterable[Outgoing]) -> PublishError | None:
        """Add each of `msgs`; when one cannot be published, it and the rest are failures (and the error returned)."""
        pending = iter(msgs)
        for msg in pending:
            try:
                await self.add(msg)
            except PublishError as e:  # no channel to publish on, or no confirm for too long
                self.failed += [(m.message_id, e) for m in (msg, *pending)]
                return e
        return None

    def _done(self, task: asyncio.Task[None]) -> None:
        msg = self._pending.pop(task)
        self._slots.release()
        if task.cancelled():  # aiormq cancels the confirms outstanding on a channel that closed
            self.failed.append((msg.message_id, PublishConnectionError("the channel closed before the confirm")))
        elif task.exception() is not None:
            self.failed.append((msg.message_id, task.exception()))  # type: ignore[arg-type]

    async def wait(self) -> None:
        """Wait for every confirm (untimed pipelines: at most `publish_timeout_s`, then the rest failed)."""
        if not self._pending:
            return
        if self._timed:
            await asyncio.wait(set(self._pending))
            return
        _, late = await asyncio.wait(set(self._pending), timeout=self.publisher.settings.publish_timeout_s)
        for task in late:
            task.remove_done_callback(self._done)
            msg = self._pending.pop(task)
            task.cancel()
            self.failed.append((msg.message_id, self.publisher.not_confirmed(msg)))


def _nacked(msg: Outgoing) -> PublishNotConfirmed:
    return PublishNotConfirmed(
        f"task {msg.task_name!r} (id {msg.message_id}) was rejected by the broker (nack): "
        f"queue {msg.routing_key!r} may be full (x-overflow=reject-publish) or unavailable"
    )
