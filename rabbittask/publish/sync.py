"""Sync publishing with pika: one connection and confirm channel per thread.

pika is not thread-safe, so the app keeps one `SyncPublisher` per thread (and per process:
a forked child never reuses its parent's socket). Every publish is `mandatory` and waits for
the broker's confirm, bounded by `publish_timeout_s`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from rabbittask.amqp.blocking import ACCESS_REFUSED, NOT_FOUND, connect_error
from rabbittask.amqp.link import BlockingLink
from rabbittask.amqp.properties import pika_properties
from rabbittask.errors import PublishNotConfirmed, not_confirmed_advice
from rabbittask.message import Outgoing, missing_exchange, publish_target, resent
from rabbittask.settings import Settings, host_port

log = logging.getLogger(__name__)

_CONNECTION_ERRORS = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ChannelWrongStateError,
    pika.exceptions.ConnectionWrongStateError,
    pika.exceptions.StreamLostError,
    pika.exceptions.ChannelClosed,
    OSError,
)
ACTION = "publish to"  # errors say "cannot publish to the broker at ..."


class _Timeout(Exception):
    """Raised inside pika's I/O loop when a confirm takes longer than the publish timeout."""


class SyncPublisher:
    """Confirmed publishing on one `BlockingLink` (connection and confirm channel), used by one thread."""

    def __init__(self, settings: Settings, declare: Callable[[BlockingChannel], None]) -> None:
        self.settings = settings
        self._declare = declare
        self.link = BlockingLink(settings, "publisher", action=ACTION)
        self.pid = os.getpid()
        self._deadline: float | None = None  # monotonic time the publish in flight must be confirmed by
        self._watching = False  # a watchdog timer is armed in the connection's I/O loop

    def open(self) -> BlockingChannel:
        """Connect, open the confirm channel and declare the topology."""
        self._watching = False  # a timer of an earlier connection died with its I/O loop
        return self.link.open(self._setup)

    def _setup(self, channel: BlockingChannel) -> None:
        channel.confirm_delivery()
        self._declare(channel)

    def publish(self, msg: Outgoing) -> None:
        """Publish and wait for the confirm; reopen a connection that dropped while idle, once."""
        channel, was_open = self.link.channel, self.link.is_open
        if channel is None or not was_open:
            channel = self.open()
        try:
            self._publish(channel, msg)
        except _CONNECTION_ERRORS as e:
            self.close(abort=True)
            if isinstance(e, pika.exceptions.ChannelClosedByBroker) and e.reply_code == ACCESS_REFUSED:
                raise connect_error(self.settings, e, ACTION) from None
            if not was_open or isinstance(e, pika.exceptions.ConnectionBlockedTimeout):
                raise connect_error(self.settings, e, ACTION) from None
            # Its confirm never came: the message may be on the broker already. The copy is marked
            # (`rt-resent`), so a task can tell it, and `dedupe_s` tasks run only one of the two.
            log.info("publisher connection was closed (%s); reopening once and re-sending", type(e).__name__)
            self._publish(self.open(), resent(msg))

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
                f"{not_confirmed_advice(msg.message_id)}"
            ) from None
        finally:
            self._deadline = None

    def _io_loop(self) -> Any:
        return self.link.connection._impl.ioloop  # type: ignore[union-attr]

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
        self._watching = False  # its timer dies with the connection's I/O loop
        self.link.close(abort=abort)
