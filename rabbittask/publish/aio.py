"""Async publishing on aiormq (the protocol layer under aio-pika): confirms, mandatory, timeouts."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence

import aiormq
import aiormq.abc
from pamqp.commands import Basic

from rabbittask.amqp.connect import CONNECTION_ERRORS, access_refused, reply_text
from rabbittask.amqp.link import Link
from rabbittask.amqp.properties import properties
from rabbittask.errors import (
    PublishAccessRefused,
    PublishConnectionError,
    PublishError,
    PublishNotConfirmed,
    not_confirmed_advice,
)
from rabbittask.message import Outgoing, missing_exchange, publish_target, resent
from rabbittask.publish.declare import declare_async
from rabbittask.settings import Settings, host_port, mask_url
from rabbittask.topology import Declaration

log = logging.getLogger(__name__)


class AsyncPublisher:
    """Confirmed publishing on one `Link` (connection and confirm channel), for one event loop."""

    def __init__(self, settings: Settings, decls: Sequence[Declaration], role: str = "publisher") -> None:
        self.settings = settings
        self.decls = decls
        self.role = role
        self.link = Link(settings, role, setup=self._declare)
        self.on_confirm: Callable[[float], None] | None = None  # seconds from publish to confirm (worker metrics)

    async def _declare(self, channel: aiormq.abc.AbstractChannel) -> None:
        if self.settings.declare_topology:
            await declare_async(channel, self.decls)

    async def channel(self) -> aiormq.abc.AbstractChannel:
        """The open confirm channel, connecting (and declaring the topology) first when needed."""
        return await self.link.channel()

    async def side_channel(self) -> aiormq.abc.AbstractChannel:
        """A new channel without confirms on this publisher's connection, for best-effort messages (events)."""
        return await self.link.side_channel()

    async def publish(self, msg: Outgoing, *, alarm_wait_s: float = 0.0) -> None:
        """Publish one message and wait for its confirm; reopen a connection found closed, once.

        With `alarm_wait_s` (the worker's retry copies and dead letters), a confirm still missing after
        `publish_timeout_s` while the broker blocks this connection (`connection.blocked`: a memory or
        disk alarm) is waited for until the alarm clears, for at most `alarm_wait_s` more. The message
        sits in the blocked connection and is enqueued once the broker reads it again; giving up on it
        would leave its fate unknown.
        """
        link = self.link
        was_open = link.is_open
        try:
            if alarm_wait_s > 0:
                await self._publish_through_alarms(await link.channel(), msg, alarm_wait_s)
            else:
                await self._publish(await link.channel(), msg)
        except PublishConnectionError:
            if not was_open:
                raise
            # Its confirm never came: the message may be on the broker already. The copy is marked
            # (`rt-resent`), so a task can tell it, and `dedupe_s` tasks run only one of the two.
            log.info("publisher connection was closed; reopening once and re-sending")
            await link.close()
            await self._publish(await link.channel(), resent(msg))

    async def _publish_through_alarms(
        self, channel: aiormq.abc.AbstractChannel, msg: Outgoing, alarm_wait_s: float
    ) -> None:
        timeout_s = self.settings.publish_timeout_s
        publish = asyncio.ensure_future(self._publish(channel, msg, timed=False))
        try:
            done, _ = await asyncio.wait({publish}, timeout=timeout_s)
            if not done and await self.link.blocked():
                log.warning(
                    "the broker blocks publishing (a memory or disk alarm): task %s [%s] waits up to %g s for it "
                    "to clear",
                    msg.task_name,
                    msg.message_id,
                    alarm_wait_s,
                )
                deadline = time.monotonic() + alarm_wait_s
                while not done and (left_s := deadline - time.monotonic()) > 0:
                    if not await self.link.blocked():  # cleared: the broker reads the connection again
                        done, _ = await asyncio.wait({publish}, timeout=timeout_s)
                        break
                    done, _ = await asyncio.wait({publish}, timeout=min(left_s, 0.5))
            if not done:
                raise self.not_confirmed(msg)
            publish.result()  # its error, if the broker nacked or returned it
        finally:
            if not publish.done():
                publish.cancel()

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
            doing = f"publish task {msg.task_name!r} to exchange {exchange!r}"
            raise access_refused(self.settings, e, doing, PublishAccessRefused) from None
        except aiormq.exceptions.PublishError:
            raise PublishNotConfirmed(
                f"task {msg.task_name!r} (id {msg.message_id}) was returned by the broker: no queue is bound "
                f"to routing key {msg.routing_key!r} on exchange {exchange!r}"
            ) from None
        except aiormq.exceptions.DeliveryError:  # aiormq raises this for a basic.nack
            raise _nacked(msg) from None
        except aiormq.exceptions.ChannelNotFoundEntity as e:  # the broker closed the channel: the next publish reopens
            raise missing_exchange(msg, exchange, reply_text(e)) from None
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
            f"{not_confirmed_advice(msg.message_id)}"
        )

    async def close(self) -> None:
        """Close the connection, ignoring errors of an already broken one."""
        await self.link.close()


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
        channel = await self.publisher.link.channel()
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
