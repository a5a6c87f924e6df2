"""Sync publishing with pika: one connection and confirm channel per thread.

pika is not thread-safe, so the app keeps one `SyncPublisher` per thread (and per process:
a forked child never reuses its parent's socket). Every publish is `mandatory` and waits for
the broker's confirm, bounded by `publish_timeout_s`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from rabbittask import endpoints
from rabbittask.errors import AccessRefused, ConfigError, PublishConnectionError, PublishNotConfirmed, TopologyMismatch
from rabbittask.message import Outgoing, missing_exchange, publish_target
from rabbittask.settings import Settings, host_port, mask_url

log = logging.getLogger(__name__)

_CONNECTION_ERRORS = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ChannelWrongStateError,
    pika.exceptions.ConnectionWrongStateError,
    pika.exceptions.StreamLostError,
    pika.exceptions.ChannelClosed,
    OSError,
)


class _Timeout(Exception):
    """Raised inside pika's I/O loop when a confirm takes longer than the publish timeout."""


def connection_params(settings: Settings, role: str) -> list[pika.URLParameters]:
    """pika parameters of each node, in failover order (see endpoints.py), every wait bounded by the settings.

    `pika.BlockingConnection` takes the list and tries each node once, in order.
    """
    return [_params(settings, url, role) for url in endpoints.candidates(settings)]


def _params(settings: Settings, url: str, role: str) -> pika.URLParameters:
    params = pika.URLParameters(url)
    context = endpoints.ssl_context(settings, url)
    if context is not None:
        params.ssl_options = pika.SSLOptions(context, server_hostname=endpoints.hostname(url))
    params.socket_timeout = settings.connect_timeout_s
    params.stack_timeout = settings.connect_timeout_s
    params.blocked_connection_timeout = settings.publish_timeout_s
    params.connection_attempts = 1
    params.heartbeat = settings.heartbeat_s
    params.client_properties = {"connection_name": f"rabbittask {role} pid={os.getpid()}"}
    return params


def opened(settings: Settings, connection: pika.BlockingConnection) -> None:
    """Remember which node a new connection reached, so the next one tries it first."""
    params = connection._impl.params
    for url in settings.broker_urls:
        parts = urlsplit(url)
        if (parts.hostname or "localhost") == params.host and (parts.port or params.port) == params.port:
            endpoints.connected(settings, url)
            return


ACCESS_REFUSED = 403
NOT_FOUND = 404


def connect_error(settings: Settings, e: BaseException) -> PublishConnectionError:
    """A `PublishConnectionError` that says where and why, with the password masked."""
    where = host_port(settings.broker_url)
    if isinstance(e, pika.exceptions.ProbableAuthenticationError | pika.exceptions.AuthenticationError):
        return AccessRefused(
            f"cannot publish to the broker at {where}: the broker refused the login: check the user and "
            "password in the broker URL"
        )
    if isinstance(e, pika.exceptions.ProbableAccessDeniedError):
        return AccessRefused(
            f"cannot publish to the broker at {where}: access to the virtual host was refused: check the vhost "
            "in the URL and the user's permissions"
        )
    if isinstance(e, pika.exceptions.ChannelClosedByBroker) and e.reply_code == ACCESS_REFUSED:
        user = urlsplit(settings.broker_urls[0]).username or "guest"
        return AccessRefused(
            f"the broker refused user {user!r} an operation: {mask_url(e.reply_text)}. Grant the permission "
            "(docs/operations.md, least-privilege users), or apply the topology as an admin "
            "(`rabbittask topology apply`) and set declare_topology=False"
        )
    if isinstance(e, pika.exceptions.ConnectionBlockedTimeout):
        why = (
            f"the broker blocked publishing for more than {settings.publish_timeout_s:g} s "
            "(a memory or disk alarm); nothing was confirmed"
        )
    else:
        urls = settings.broker_urls  # pika reports the last node's error: explain it only for one node
        tls = endpoints.explain(settings, urls[0], e) if len(urls) == 1 else None
        why = tls or mask_url(str(e) or type(e).__name__) + " (is RabbitMQ running and reachable?)"
    return PublishConnectionError(f"cannot publish to the broker at {where}: {why}")


def pika_properties(msg: Outgoing) -> pika.BasicProperties:
    """AMQP properties of a task message (see docs/protocol.md), for pika."""
    return pika.BasicProperties(
        content_type=msg.content_type,
        delivery_mode=2,
        message_id=msg.message_id,
        correlation_id=msg.correlation_id,
        type=msg.task_name,
        priority=msg.priority,
        headers=msg.headers,
        reply_to=msg.reply_to,
    )


class SyncPublisher:
    """A pika connection with a confirm channel, used by one thread."""

    def __init__(self, settings: Settings, declare: Callable[[BlockingChannel], None]) -> None:
        self.settings = settings
        self._declare = declare
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self.pid = os.getpid()
        self._deadline: float | None = None  # monotonic time the publish in flight must be confirmed by
        self._watching = False  # a watchdog timer is armed in the connection's I/O loop

    def open(self) -> BlockingChannel:
        """Connect, open the confirm channel and declare the topology."""
        if self._connection is not None:
            self.close()  # a connection the broker dropped: its sockets are released before a new one opens
        try:
            self._connection = pika.BlockingConnection(connection_params(self.settings, "publisher"))
            opened(self.settings, self._connection)
            channel = self._connection.channel()
            channel.confirm_delivery()
            self._declare(channel)
        except (TopologyMismatch, ConfigError):
            self.close()
            raise
        except Exception as e:  # noqa: BLE001 - pika raises connection-workflow errors outside AMQPError
            if self._connection is None:  # no node answered: the next attempt starts with another one
                endpoints.unreachable(self.settings, endpoints.candidates(self.settings)[0])
            self.close()
            raise connect_error(self.settings, e) from None
        self._channel = channel
        return channel

    def publish(self, msg: Outgoing) -> None:
        """Publish and wait for the confirm; reopen a connection that dropped while idle, once."""
        channel, was_open = self._channel, self._channel is not None and self._channel.is_open
        if channel is None or not was_open:
            channel = self.open()
        try:
            self._publish(channel, msg)
        except _CONNECTION_ERRORS as e:
            self.close(abort=True)
            if isinstance(e, pika.exceptions.ChannelClosedByBroker) and e.reply_code == ACCESS_REFUSED:
                raise connect_error(self.settings, e) from None
            if not was_open or isinstance(e, pika.exceptions.ConnectionBlockedTimeout):
                raise connect_error(self.settings, e) from None
            log.info("publisher connection was closed (%s); reopening once", type(e).__name__)
            self._publish(self.open(), msg)

    def _publish(self, channel: BlockingChannel, msg: Outgoing) -> None:
        props = pika_properties(msg)
        exchange, routing_key = publish_target(msg, self.settings.exchange)
        # pika's BlockingChannel waits for a confirm without a bound; a watchdog timer in its own I/O
        # loop raises out of that wait, so a paused or partitioned broker cannot hang the caller.
        self._deadline = time.monotonic() + self.settings.publish_timeout_s
        if not self._watching:
            self._watching = True
            self._io_loop().call_later(self.settings.publish_timeout_s, self._watchdog)
        try:
            channel.basic_publish(exchange, routing_key, msg.body, props, mandatory=True)
        except pika.exceptions.UnroutableError:
            raise PublishNotConfirmed(
                f"task {msg.task_name!r} (id {msg.message_id}) was returned by the broker: no queue is bound "
                f"to routing key {msg.routing_key!r} on exchange {exchange!r}. Declare the topology "
                "(start a worker or run `rabbittask topology apply`)."
            ) from None
        except pika.exceptions.ChannelClosedByBroker as e:
            if e.reply_code != NOT_FOUND:
                raise
            # Only the channel is gone; the next publish opens a new connection and channel.
            self.close(abort=True)
            raise missing_exchange(msg, exchange, e.reply_text) from None
        except pika.exceptions.NackError:
            # A channel whose quorum queue lost its leader can go on nacking after a new one is elected
            # (seen on 3.10): the next publish starts on a new connection.
            self.close(abort=True)
            raise PublishNotConfirmed(
                f"task {msg.task_name!r} (id {msg.message_id}) was rejected by the broker (nack): "
                f"queue {msg.routing_key!r} may be full (x-overflow=reject-publish) or unavailable"
            ) from None
        except _Timeout:
            self.close(abort=True)
            raise PublishNotConfirmed(
                f"task {msg.task_name!r} (id {msg.message_id}) was not confirmed by the broker at "
                f"{host_port(self.settings.broker_url)} within {self.settings.publish_timeout_s:g} s; "
                "it may or may not have been enqueued (re-sending with the same message id is safe)"
            ) from None
        finally:
            self._deadline = None

    def _io_loop(self) -> Any:
        return self._connection._impl.ioloop  # type: ignore[union-attr]

    def _watchdog(self) -> None:
        """Raise out of a publish past its deadline; re-arm while publishes go on (one timer, not one each)."""
        deadline = self._deadline
        if deadline is None:
            self._watching = False  # idle: the next publish arms it again
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            self._deadline, self._watching = None, False
            raise _Timeout()
        self._io_loop().call_later(remaining, self._watchdog)

    def close(self, *, abort: bool = False) -> None:
        """Close the connection (`abort`: drop it without the close handshake a stuck broker never answers)."""
        connection, self._connection, self._channel = self._connection, None, None
        self._watching = False  # its timer dies with the connection's I/O loop
        if connection is None:
            return
        if abort or not connection.is_open:
            abort_connection(connection)  # a connection the broker closed still holds its I/O loop's sockets
            return
        try:
            connection.close()
        except Exception:  # noqa: BLE001 - closing a broken connection must not mask the real error
            log.debug("closing a broken publisher connection failed", exc_info=True)
            abort_connection(connection)


def abort_connection(connection: pika.BlockingConnection) -> None:
    """Close a pika connection's socket and I/O loop at once, without waiting for the broker."""
    impl = connection._impl
    try:
        # With the reason set, pika reports a lost stream instead of logging an AssertionError traceback.
        impl._terminate_stream(pika.exceptions.StreamLostError("dropped by rabbittask: the broker did not answer"))
        impl.ioloop.process_timeouts()
    except Exception:  # noqa: BLE001 - the connection is being thrown away
        log.debug("aborting a publisher connection failed", exc_info=True)
    finally:
        with contextlib.suppress(Exception):
            impl.ioloop.close()
