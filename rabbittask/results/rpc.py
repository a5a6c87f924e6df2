"""`.call()` over RabbitMQ direct reply-to: no reply queue, no extra server.

The reply consumer (`amq.rabbitmq.reply-to`, no-ack) is started on the channel that publishes
the requests, before the first request, as the broker requires. Sync callers get one pika
connection per thread (pika is not thread-safe); async callers share one aiormq channel per
event loop, with a future per correlation id.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiormq
import aiormq.abc
import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pydantic_core import from_json

from rabbittask.errors import PublishConnectionError, PublishNotConfirmed, TaskError
from rabbittask.publish.aio import CONNECTION_ERRORS, connect, properties
from rabbittask.publish.outgoing import Outgoing
from rabbittask.publish.sync import connect_error, connection_params
from rabbittask.settings import Settings

REPLY_TO = "amq.rabbitmq.reply-to"


def decode_reply(body: bytes) -> Any:
    """The result in a reply, or raise the remote failure as `TaskError`."""
    data = from_json(body)
    if data.get("ok"):
        return data.get("result")
    raise TaskError(data.get("exc_type", "Error"), data.get("message", ""), data.get("traceback", ""))


def _timeout(msg: Outgoing, timeout_s: float) -> TimeoutError:
    return TimeoutError(f"no reply from task {msg.task_name!r} (id {msg.message_id}) within {timeout_s:g} s")


class SyncRpc:
    """Direct reply-to calls on one pika connection; used by one thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._replies: dict[str, bytes] = {}

    def _open(self) -> BlockingChannel:
        if self._channel is not None and self._channel.is_open:
            return self._channel
        try:
            self._connection = pika.BlockingConnection(connection_params(self.settings, "rpc"))
            channel = self._connection.channel()
            channel.basic_consume(REPLY_TO, self._on_reply, auto_ack=True)
            channel.confirm_delivery()
        except (pika.exceptions.AMQPError, OSError) as e:
            self.close()
            raise connect_error(self.settings, e) from None
        self._channel = channel
        return channel

    def _on_reply(self, _ch: Any, _method: Any, props: pika.BasicProperties, body: bytes) -> None:
        if props.correlation_id:
            self._replies[props.correlation_id] = body

    def call(self, msg: Outgoing, timeout_s: float) -> Any:
        """Publish `msg` with reply-to set and wait for its reply."""
        channel = self._open()
        msg.reply_to, msg.correlation_id = REPLY_TO, msg.message_id
        props = pika.BasicProperties(
            content_type=msg.content_type,
            delivery_mode=2,
            message_id=msg.message_id,
            type=msg.task_name,
            priority=msg.priority,
            headers=msg.headers,
            reply_to=REPLY_TO,
            correlation_id=msg.message_id,
        )
        exchange = self.settings.exchange if msg.exchange is None else msg.exchange
        try:
            channel.basic_publish(exchange, msg.routing_key, msg.body, props, mandatory=True)
            deadline = time.monotonic() + timeout_s
            while msg.message_id not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _timeout(msg, timeout_s)
                assert self._connection is not None
                self._connection.process_data_events(time_limit=min(left, 1.0))
        except pika.exceptions.UnroutableError:
            raise PublishNotConfirmed(f"task {msg.task_name!r}: no queue bound to {msg.routing_key!r}") from None
        except (pika.exceptions.AMQPError, OSError) as e:
            self.close()
            raise PublishConnectionError(f"RPC call of task {msg.task_name!r} lost its connection: {e}") from None
        return decode_reply(self._replies.pop(msg.message_id))

    def close(self) -> None:
        """Close the connection."""
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except Exception:  # noqa: BLE001 - closing a broken connection must not mask the real error
                pass


class AsyncRpc:
    """Direct reply-to calls for one event loop: one channel, a future per correlation id."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._connection: aiormq.abc.AbstractConnection | None = None
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._futures: dict[str, asyncio.Future[bytes]] = {}
        self._lock = asyncio.Lock()

    async def _open(self) -> aiormq.abc.AbstractChannel:
        async with self._lock:
            if self._channel is None or self._channel.is_closed:
                await self.close()
                self._connection = await connect(self.settings, "rpc")
                channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
                await channel.basic_consume(REPLY_TO, self._on_reply, no_ack=True)
                self._channel = channel
            return self._channel

    async def _on_reply(self, message: aiormq.abc.DeliveredMessage) -> None:
        future = self._futures.get(message.header.properties.correlation_id or "")
        if future is not None and not future.done():
            future.set_result(message.body)

    async def call(self, msg: Outgoing, timeout_s: float) -> Any:
        """Publish `msg` with reply-to set and await its reply."""
        channel = await self._open()
        msg.reply_to, msg.correlation_id = REPLY_TO, msg.message_id
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._futures[msg.message_id] = future
        exchange = self.settings.exchange if msg.exchange is None else msg.exchange
        try:
            await channel.basic_publish(
                msg.body,
                exchange=exchange,
                routing_key=msg.routing_key,
                properties=properties(msg),
                mandatory=True,
                timeout=self.settings.publish_timeout_s,
            )
            body = await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise _timeout(msg, timeout_s) from None
        except aiormq.exceptions.PublishError:
            raise PublishNotConfirmed(f"task {msg.task_name!r}: no queue bound to {msg.routing_key!r}") from None
        except CONNECTION_ERRORS as e:
            raise PublishConnectionError(f"RPC call of task {msg.task_name!r} lost its connection: {e}") from None
        finally:
            self._futures.pop(msg.message_id, None)
        return decode_reply(body)

    async def close(self) -> None:
        """Close the connection."""
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and not connection.is_closed:
            try:
                await connection.close()
            except Exception:  # noqa: BLE001 - closing a broken connection must not mask the real error
                pass
