"""Who should answer a broadcast: the worker children alive a moment ago, from the presence stream.

Each child appends a `Heartbeat` (ops/heartbeat.py) to the `<exchange>.workers` stream every
`events_heartbeat_s`, and a last one typed `worker.offline` when it stops. A caller reads the stream
from a few heartbeats back (`x-stream-offset` as a timestamp); a child whose last heartbeat is recent
and not an offline one is expected to answer. A process stopped with SIGSTOP, or cut off from the
broker, sends nothing more but its last heartbeat is still there: it is named missing. A stream,
not the heartbeats of the events exchange, because a caller that starts now must see the past.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime

import aiormq
import aiormq.abc
from aiormq.abc import DeliveredMessage

from rabbittask.control.wire import worker_id
from rabbittask.ops.heartbeat import OFFLINE, Heartbeat
from rabbittask.settings import Settings
from rabbittask.topology import PRESENCE_AGE_S, presence_stream_name
from rabbittask.topology import control_stream_arguments as stream_arguments

BEATS_BACK = 3  # heartbeats a child may miss before it is no longer expected
SETTLE_S = 0.15  # no presence record for this long after the last one: the stream's tail is reached
SLACK_S = 1.0


class Roster:
    """Reads the presence stream while a broadcast is answered."""

    def __init__(self, settings: Settings, destination: Sequence[str] | None = None) -> None:
        self.settings = settings
        self.destination = set(destination) if destination is not None else None
        self._beats: dict[tuple[str, int], tuple[Heartbeat, bool]] = {}  # child -> (last heartbeat, offline)
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._last_record = 0.0

    async def start(self, connection: aiormq.abc.AbstractConnection) -> None:
        """Start reading the last `BEATS_BACK` heartbeats' worth of the stream."""
        channel = self._channel = await connection.channel()
        stream = presence_stream_name(self.settings.exchange)
        await channel.queue_declare(stream, durable=True, arguments=stream_arguments(PRESENCE_AGE_S))
        await channel.basic_qos(prefetch_count=1000)
        since = datetime.fromtimestamp(time.time() - self._window_s(self.settings.events_heartbeat_s), UTC)
        self._last_record = time.monotonic()
        await channel.basic_consume(stream, self._on_record, arguments={"x-stream-offset": since})

    async def stop(self) -> None:
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()

    async def _on_record(self, message: DeliveredMessage) -> None:
        self._last_record = time.monotonic()
        try:
            beat = Heartbeat.decode(message.body)
        except ValueError:
            beat = None
        if beat is not None:
            self._beats[beat.key] = (beat, message.header.properties.message_type == OFFLINE)
        if self._channel is not None and message.delivery_tag is not None:
            await self._channel.basic_ack(message.delivery_tag)

    def settled(self) -> bool:
        """True once the stream's tail is (very likely) reached."""
        return time.monotonic() - self._last_record >= SETTLE_S

    @staticmethod
    def _window_s(interval_s: float) -> float:
        return BEATS_BACK * interval_s + SLACK_S

    def expected(self) -> list[str]:
        """The children (`host:pid`) that should answer: recently alive, not offline, addressed."""
        now = time.time()
        wanted = []
        for (host, pid), (beat, offline) in self._beats.items():
            if offline or beat.ts < now - self._window_s(beat.interval_s):
                continue
            if self.destination is not None and not (
                worker_id(host, pid) in self.destination or worker_id(host, beat.ppid) in self.destination
            ):
                continue
            wanted.append(worker_id(host, pid))
        return sorted(wanted)

    def supervisors(self) -> dict[str, str]:
        """child `host:pid` -> its worker's (supervisor's) `host:pid`, for the expected children."""
        return {worker_id(h, p): worker_id(h, b.ppid) for (h, p), (b, _) in self._beats.items()}

    def all_answered(self, answered: set[str]) -> bool:
        """True when the roster is read and every expected child is among `answered` (and one answered at all)."""
        expected = self.expected()
        return bool(expected) and self.settled() and answered.issuperset(expected)
