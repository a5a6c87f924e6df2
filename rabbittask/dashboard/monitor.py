"""The dashboard's side of the broker: it listens to the events exchange and reads queue depths.

Heartbeats arrive on an exclusive, auto-deleted queue bound to `worker.*` of `<exchange>.events`,
consumed without acks: the dashboard is a spectator. Task events are read from the history stream
(`<exchange>.history`), from the first one it keeps, so a restarted dashboard (or a second one)
shows the past; after a lost connection it reads on from the offset after the last one it took.
With `history=False` task events come on the exclusive queue too (`task.#`, and beat's `beat.#`), from the
start only.
When the connection drops it reconnects every `RECONNECT_S`, and the
page says events are not coming in meanwhile. Queue depths are read by passive declares on the same
connection when the page asks, at most once per `DEPTHS_S`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import aiormq
import aiormq.abc
from aiormq.abc import DeliveredMessage

from rabbittask.amqp.link import Link
from rabbittask.dashboard.history import History
from rabbittask.delays import DELAY_LEVELS, delay_level_name, unroutable_name
from rabbittask.errors import RabbitTaskError
from rabbittask.history import stream as history
from rabbittask.ops.heartbeat import ROUTING_KEYS, Heartbeat
from rabbittask.ops.status import beats_of, queue_depth, queue_row, workers_of, workflows_of
from rabbittask.settings import mask_url
from rabbittask.topology import events_exchange_name, history_stream_name

if TYPE_CHECKING:
    from rabbittask.app import App

log = logging.getLogger(__name__)

RECONNECT_S = 2.0
DEPTHS_S = 1.5
LIVE_TASKS = "task.#"


class Monitor:
    """Feeds a `History` from the events exchange and answers what the page shows."""

    def __init__(self, app: App, history: History | None = None) -> None:
        self.app = app
        self.history = history or History(app.tasks)
        self.exchange = events_exchange_name(app.settings.exchange)
        self.error: str | None = "connecting"
        self._connection: aiormq.abc.AbstractConnection | None = None
        self._depths: tuple[float, list[dict[str, Any]], int | None, int | None] | None = None
        self._lock = asyncio.Lock()
        self.history_error: str | None = None  # why the history stream cannot be read
        self._next_offset: int | None = None  # of the history stream, after the last event read

    async def run(self) -> None:
        """Listen until cancelled, reconnecting after a lost connection."""
        link = Link(self.app.settings, "dashboard")
        while True:
            try:
                connection = await link.connect()
            except RabbitTaskError as e:
                self._lost(str(e))
                await asyncio.sleep(RECONNECT_S)
                continue
            try:
                await self._listen(connection)
                self._connection, self.error = connection, None
                await connection.closing
                self._lost("the broker closed the connection")
            except Exception as e:  # noqa: BLE001 - whatever broke the connection, the dashboard reconnects
                self._lost(f"lost the connection to the broker ({mask_url(str(e)) or type(e).__name__})")
            finally:
                self._connection = None
                await link.close()
            await asyncio.sleep(RECONNECT_S)

    def _lost(self, why: str) -> None:
        if self.error is None or self.error == "connecting":
            log.warning("not hearing events: %s; reconnecting every %.0f s", why, RECONNECT_S)
        self.error = f"{why}; reconnecting"

    async def _listen(self, connection: aiormq.abc.AbstractConnection) -> None:
        channel = await connection.channel()
        # Declared like a worker declares it, so a dashboard started first still hears the workers.
        declare = self.app.settings.declare_topology
        await channel.exchange_declare(self.exchange, exchange_type="topic", durable=True, passive=not declare)
        ok = await channel.queue_declare("", exclusive=True, auto_delete=True)
        assert ok.queue is not None
        history_on = self.app.settings.history
        if history_on:
            self.history_error = await history.declare(connection.channel, self.app.settings)
            if self.history_error is not None:
                log.warning("showing live events only: %s", self.history_error)
                history_on = False
        for key in (ROUTING_KEYS,) if history_on else (LIVE_TASKS, history.BEAT_BINDING, ROUTING_KEYS):
            await channel.queue_bind(ok.queue, self.exchange, routing_key=key)

        async def on_message(message: DeliveredMessage) -> None:
            try:
                body = json.loads(message.body)
            except ValueError:
                return
            if isinstance(body, dict) and message.routing_key is not None:
                self.history.feed(message.routing_key, body)

        await channel.basic_consume(ok.queue, on_message, no_ack=True)
        if history_on:
            await self._read_history(connection)

    async def _read_history(self, connection: aiormq.abc.AbstractConnection) -> None:
        channel = await connection.channel()
        await channel.basic_qos(prefetch_count=history.PREFETCH)
        offset: history.Offset = "first" if self._next_offset is None else self._next_offset

        async def on_event(message: DeliveredMessage) -> None:
            headers = message.header.properties.headers or {}
            position = headers.get("x-stream-offset")
            if isinstance(position, int):
                if self._next_offset is not None and position < self._next_offset:
                    return  # already read before a reconnect (a stream starts at a chunk's first message)
                self._next_offset = position + 1
            try:
                body = json.loads(message.body)
            except ValueError:
                body = None
            if isinstance(body, dict) and message.routing_key is not None:
                self.history.feed(message.routing_key, body, now=history.event_time(body))
            tag = message.delivery_tag
            if tag is not None and tag % history.ACK_EVERY == 0 and not channel.is_closed:
                await channel.basic_ack(tag, multiple=True)

        await channel.basic_consume(
            history_stream_name(self.app.settings.exchange), on_event, arguments={"x-stream-offset": offset}
        )

    def workers(self) -> list[dict[str, Any]]:
        """Live workers of this app (children's heartbeats summed per supervisor)."""
        return workers_of(self._mine())

    def workflows(self) -> list[dict[str, Any]]:
        """Chords being joined now (members reported of all), from the active joiners' heartbeats."""
        return workflows_of(self._mine())

    def _mine(self) -> list[Heartbeat]:
        return beats_of(self.history.live_beats(), self.app.queues)

    async def queues(self) -> tuple[list[dict[str, Any]], int | None, int | None]:
        """Rows of the app's queues (as `rabbittask status`), the messages waiting in the delay ladder, and the
        delayed messages that came due for a queue that no longer exists (`<exchange>.unroutable`)."""
        async with self._lock:
            if self._depths is not None and time.monotonic() - self._depths[0] < DEPTHS_S:
                return self._depths[1], self._depths[2], self._depths[3]
            connection = self._connection
            if connection is None or connection.is_closed:
                return [], None, None
            beats = self._mine()
            try:
                rows = [
                    await queue_row(connection, q, beats, self.app.queues[q].partitions)
                    for q in sorted(self.app.queues)
                ]
                delayed = await self._delayed(connection)
                unroutable = (await queue_depth(connection, unroutable_name(self.app.settings.exchange)))[0]
            except (aiormq.exceptions.AMQPError, ConnectionError) as e:
                log.debug("queue depths not read: %s", e)
                return [], None, None
            self._depths = (time.monotonic(), rows, delayed, unroutable)
            return rows, delayed, unroutable

    async def _delayed(self, connection: aiormq.abc.AbstractConnection) -> int | None:
        """Messages in the delay ladder of the app's exchange (retries and countdowns of all its queues)."""
        exchange = self.app.settings.exchange
        depths = [(await queue_depth(connection, delay_level_name(exchange, k)))[0] for k in range(DELAY_LEVELS)]
        known = [d for d in depths if d is not None]
        return sum(known) if known else None
