"""`.acall()` over RabbitMQ direct reply-to: no reply queue, no extra server.

The reply consumer (`amq.rabbitmq.reply-to`, no-ack) is started on the channel that publishes the
requests, before the first request, as the broker requires. Every concurrent call of an event loop
shares that connection and consumer: a future per correlation id, removed when the call ends
(aio-pika's RPC pattern). Sync callers use `sync_rpc.SyncRpc` (pika, shared by all threads).

A call does not wait for the request's publisher confirm before it waits for the reply: on a
classic queue the broker may confirm a persistent message only once the worker acked it, that is
after the reply. The confirm still matters for errors: a nack, an unroutable return, or no
confirm in time fails the call unless its reply has already arrived.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import aiormq
import aiormq.abc
from pamqp.commands import Basic

from rabbittask.amqp.link import Link
from rabbittask.amqp.properties import properties
from rabbittask.errors import PublishConnectionError, PublishNotConfirmed, TopologyMismatch
from rabbittask.message import Outgoing
from rabbittask.progress import H_PROGRESS, H_PROGRESS_REPLY, Progress
from rabbittask.publish.declare import declare_async
from rabbittask.results.record import decode_result
from rabbittask.settings import Settings, mask_url
from rabbittask.topology import Declaration

log = logging.getLogger(__name__)

REPLY_TO = "amq.rabbitmq.reply-to"
decode_reply = decode_result  # a reply body is a result record (results/record.py)


Waiter = asyncio.Future[bytes]
OnProgress = Callable[[Progress], object]


def call_back(callback: OnProgress, body: bytes) -> None:
    """Hand a progress message to a caller's callback; one that raises is logged, the call goes on."""
    try:
        report = Progress.of(json.loads(body))
    except (ValueError, KeyError, TypeError):
        return
    try:
        callback(report)
    except Exception:
        log.exception("on_progress callback %r raised; the call goes on", callback)


def _settle(waiter: Waiter, body: bytes = b"", error: Exception | None = None) -> None:
    """Resolve a waiter once; one whose caller gave up (cancelled) is left alone."""
    if waiter.done():
        return
    if error is None:
        waiter.set_result(body)
    else:
        waiter.set_exception(error)


def reply_timeout(msg: Outgoing, timeout_s: float) -> TimeoutError:
    """The error of a call whose reply did not come in time, naming the task and its id."""
    return TimeoutError(f"no reply from task {msg.task_name!r} (id {msg.message_id}) within {timeout_s:g} s")


class AsyncRpc:
    """Direct reply-to calls for one event loop: one `Link` (connection and channel), a future per correlation id."""

    def __init__(self, settings: Settings, decls: Sequence[Declaration], role: str = "rpc") -> None:
        self.settings = settings
        self.decls = decls
        self.role = role
        # Returns are not raised by aiormq here: the confirm future then holds the returned message,
        # which `_send` reads (see there).
        self.link = Link(
            settings, role, setup=self._setup, on_return_raises=False, doing="declare the app's topology for RPC"
        )
        self._waiting: dict[str, Waiter] = {}
        self._on_progress: dict[str, OnProgress] = {}  # calls made with on_progress=, by correlation id
        self._sends: set[asyncio.Task[None]] = set()

    async def open(self) -> aiormq.abc.AbstractChannel:
        """The open channel with its reply consumer; connect and declare the topology first when needed."""
        return await self.link.channel()

    async def _setup(self, channel: aiormq.abc.AbstractChannel) -> None:
        await declare_async(channel, self.decls)
        await channel.basic_consume(REPLY_TO, self._on_reply, no_ack=True)
        channel.closing.add_done_callback(self._on_close)  # last: a channel that failed its setup fails no call

    async def _on_reply(self, message: aiormq.abc.DeliveredMessage) -> None:
        props = message.header.properties
        if props.headers and props.headers.get(H_PROGRESS):
            callback = self._on_progress.get(props.correlation_id or "")
            if callback is not None:
                call_back(callback, message.body)
            return
        waiter = self._waiting.pop(props.correlation_id or "", None)
        if waiter is not None:
            _settle(waiter, message.body)

    def _on_close(self, closing: asyncio.Future[Any]) -> None:
        why = "closed" if closing.cancelled() or closing.exception() is None else str(closing.exception())
        error = PublishConnectionError(f"the RPC connection to the broker was lost while waiting: {mask_url(why)}")
        waiting, self._waiting = self._waiting, {}
        for waiter in waiting.values():
            _settle(waiter, error=error)

    @property
    def is_open(self) -> bool:
        """True while the channel is open (no connect before the next call)."""
        return self.link.is_open

    async def call(self, msg: Outgoing, timeout_s: float, on_progress: OnProgress | None = None) -> Any:
        """Publish `msg` with reply-to set and return the task's result (or raise its `TaskError`).

        `on_progress` is called with each `Progress` the task reports (`ctx.progress()`) while the call waits.
        """
        if on_progress is not None:
            msg.headers = {**(msg.headers or {}), H_PROGRESS_REPLY: 1}
            self._on_progress[msg.message_id] = on_progress
        if not self.is_open:
            await self.open()  # outside the timeout: it bounds the wait for the reply only
        reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.start(msg, reply)
        try:
            body = await asyncio.wait_for(reply, timeout_s)
        except TimeoutError:
            raise reply_timeout(msg, timeout_s) from None
        finally:
            self._waiting.pop(msg.message_id, None)
            self._on_progress.pop(msg.message_id, None)
        return decode_reply(body)

    def start(self, msg: Outgoing, waiter: Waiter) -> None:
        """Send `msg` and resolve `waiter` with the reply body, or with the error that stopped the request."""
        msg.reply_to, msg.correlation_id = REPLY_TO, msg.message_id
        self._waiting[msg.message_id] = waiter
        task = asyncio.ensure_future(self._send(msg, waiter))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    def forget(self, message_id: str) -> None:
        """Stop waiting for the reply to `message_id` (its caller gave up)."""
        self._waiting.pop(message_id, None)

    async def _send(self, msg: Outgoing, waiter: Waiter) -> None:
        exchange = self.settings.exchange if msg.exchange is None else msg.exchange
        try:
            channel = await self.open()
            confirm = await channel.basic_publish(
                msg.body,
                exchange=exchange,
                routing_key=msg.routing_key,
                properties=properties(msg),
                mandatory=True,
                timeout=self.settings.publish_timeout_s,
            )
        except asyncio.CancelledError:
            _settle(waiter, error=PublishConnectionError(f"RPC call of task {msg.task_name!r} was cancelled"))
            raise
        except (PublishConnectionError, TopologyMismatch) as e:
            _settle(waiter, error=e)
        except TimeoutError:
            _settle(
                waiter,
                error=PublishNotConfirmed(
                    f"task {msg.task_name!r} (id {msg.message_id}) was not confirmed by the broker within "
                    f"{self.settings.publish_timeout_s:g} s"
                ),
            )
        except Exception as e:  # noqa: BLE001 - the waiter must learn of any failure, or its caller hangs
            _settle(
                waiter,
                error=PublishConnectionError(
                    f"RPC call of task {msg.task_name!r} (id {msg.message_id}) lost its connection: "
                    f"{mask_url(str(e) or type(e).__name__)}"
                ),
            )
        else:
            if isinstance(confirm, Basic.Nack):
                _settle(
                    waiter,
                    error=PublishNotConfirmed(
                        f"task {msg.task_name!r} (id {msg.message_id}) was rejected by the broker (nack): "
                        f"queue {msg.routing_key!r} may be full (x-overflow=reject-publish) or unavailable"
                    ),
                )
            elif isinstance(confirm, aiormq.abc.DeliveredMessage):  # returned: mandatory and unroutable
                _settle(
                    waiter,
                    error=PublishNotConfirmed(
                        f"task {msg.task_name!r} (id {msg.message_id}) was returned by the broker: no queue is "
                        f"bound to routing key {msg.routing_key!r} on exchange {exchange!r}"
                    ),
                )

    async def close(self) -> None:
        """Close the connection; calls still waiting fail with `PublishConnectionError`."""
        await self.link.close()
