"""Dead-letter queues as a product: read why each message is there, replay it, or purge.

Reading never loses a message and keeps their order: every command takes all the messages the DLQ
held when it started (`basic.get`, unacked), then hands back the ones it did not replay at once
(`basic.nack multiple requeue`); if the process dies first, the broker requeues them the same way
when the channel closes. All of them, because a quorum queue puts returned messages at its back:
handing back only the first few would move them behind the rest. (Dead letters that arrive while
a command runs end up ahead of the ones it hands back.)

`replay` publishes each copy to the task queue on a separate confirm connection and acks the dead
letter only after the broker confirmed the copy: interrupted at any point, a message is in the
DLQ, in the task queue, or (between the confirm and the ack) briefly in both.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from rabbittask.amqp import blocking
from rabbittask.errors import ConfigError, PublishNotConfirmed
from rabbittask.message import (
    DEATH_HEADERS,
    FAILURE_HEADERS,
    H_ATTEMPT,
    H_DELIVERY_COUNT,
    H_ETA,
    H_EXC_MESSAGE,
    H_EXC_TYPE,
    H_EXPIRES,
    H_FAILED_AT,
    H_FIRST_SEEN,
    H_REASON,
    H_TRACEBACK,
    H_WORKER,
    parse_time,
)
from rabbittask.settings import Settings
from rabbittask.topology import dlq_name

Progress = Callable[[int, int], None]
"""Called with (done, total) as a long command goes."""

# A replayed message starts afresh: no failure, no attempts, no deadline or broker bookkeeping.
REPLAY_DROPS = DEATH_HEADERS | FAILURE_HEADERS | {H_ATTEMPT, H_FIRST_SEEN, H_DELIVERY_COUNT, H_EXPIRES, H_ETA}


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message of a dead-letter queue and why it is there."""

    id: str
    task: str
    reason: str
    attempts: int
    failed_at: float | None
    headers: dict[str, Any] = field(repr=False)
    body: bytes = field(repr=False)
    properties: pika.BasicProperties = field(repr=False)

    @classmethod
    def read(cls, properties: pika.BasicProperties, body: bytes) -> DeadLetter:
        """Interpret a dead letter: rabbittask's `rt-*` headers, else the broker's `x-death`."""
        headers: dict[str, Any] = dict(properties.headers or {})
        deaths = headers.get("x-death") or [{}]
        last = deaths[0] if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict) else {}
        reason = _text(headers.get(H_REASON)) or (f"broker: {_text(last.get('reason'))}" if last else "unknown")
        failed_at = parse_time(headers.get(H_FAILED_AT)) or parse_time(last.get("time"))
        attempts = headers.get(H_ATTEMPT, 1)
        return cls(
            id=properties.message_id or "",
            task=properties.type or "",
            reason=reason,
            attempts=attempts if isinstance(attempts, int) else 1,
            failed_at=failed_at,
            headers=headers,
            body=body,
            properties=properties,
        )

    @property
    def exc_type(self) -> str:
        return _text(self.headers.get(H_EXC_TYPE))

    @property
    def exc_message(self) -> str:
        return _text(self.headers.get(H_EXC_MESSAGE))

    @property
    def traceback(self) -> str:
        return _text(self.headers.get(H_TRACEBACK))

    @property
    def worker(self) -> str:
        return _text(self.headers.get(H_WORKER))

    def age_s(self, now: float | None = None) -> float | None:
        """Seconds since it was dead-lettered, if known."""
        if self.failed_at is None:
            return None
        return max(0.0, (time.time() if now is None else now) - self.failed_at)


@dataclass(slots=True)
class ReplayResult:
    """What `replay` did: ids sent back to the task queue, and ids asked for but not found."""

    replayed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


class DeadLetterQueue:
    """The dead-letter queue of task queue `queue`, over its own pika connections."""

    def __init__(self, settings: Settings, queue: str) -> None:
        self.settings = settings
        self.queue = queue
        self.name = dlq_name(queue)

    @contextmanager
    def _channel(self, role: str, confirm: bool = False) -> Iterator[BlockingChannel]:
        connection = blocking.connect(self.settings, role)
        try:
            channel = connection.channel()
            if confirm:
                channel.confirm_delivery()
            yield channel
        finally:
            if connection.is_open:
                connection.close()  # anything still unacked goes back to the queue, in order

    def count(self) -> int:
        """Messages ready in the DLQ."""
        with self._channel("dlq") as channel:
            return self._count(channel)

    def _count(self, channel: BlockingChannel) -> int:
        try:
            ok = channel.queue_declare(self.name, passive=True)
        except pika.exceptions.ChannelClosedByBroker as e:
            if e.reply_code == 404:
                raise ConfigError(
                    f"there is no queue {self.name!r} on the broker: is {self.queue!r} a task queue of this app?"
                ) from None
            raise
        return int(ok.method.message_count)

    def peek(self, limit: int | None = None, progress: Progress | None = None) -> tuple[list[DeadLetter], int]:
        """Up to `limit` dead letters from the head, left in place; and how many the DLQ holds."""
        out: list[DeadLetter] = []
        with self._channel("dlq ls") as channel:
            total = self._count(channel)
            for seen, (_, props, body) in enumerate(self._take(channel, total), 1):
                if limit is None or len(out) < limit:
                    out.append(DeadLetter.read(props, body))
                if progress is not None:
                    progress(seen, total)
            self._hand_back(channel)
        return out, total

    def find(self, message_id: str, progress: Progress | None = None) -> DeadLetter | None:
        """The dead letter with this id, left in place."""
        found = None
        with self._channel("dlq show") as channel:
            total = self._count(channel)
            for seen, (_, props, body) in enumerate(self._take(channel, total), 1):
                if found is None and props.message_id == message_id:
                    found = DeadLetter.read(props, body)
                if progress is not None:
                    progress(seen, total)
            self._hand_back(channel)
        return found

    @staticmethod
    def _hand_back(channel: BlockingChannel) -> None:
        if channel.is_open:
            channel.basic_nack(0, multiple=True, requeue=True)  # every unacked one, in delivery order

    def _take(self, channel: BlockingChannel, n: int) -> Iterator[tuple[int, pika.BasicProperties, bytes]]:
        for _ in range(n):
            method, props, body = channel.basic_get(self.name, auto_ack=False)
            if method is None:
                return
            yield method.delivery_tag, props, body

    def replay(
        self,
        ids: Collection[str] = (),
        limit: int | None = None,
        progress: Progress | None = None,
    ) -> ReplayResult:
        """Send dead letters (all, or those in `ids`, at most `limit`) back to the task queue, attempts reset.

        Each copy is confirmed by the broker before its dead letter is acked. Messages that come
        back into the DLQ while this runs are not replayed again: it looks at most at what the DLQ
        held when it started. `progress(done, total)` is called after each message.
        """
        wanted = set(ids)
        result = ReplayResult()
        with self._channel("dlq replay") as channel, self._channel("dlq replay publish", confirm=True) as out:
            total = max(self._count(channel), len(wanted))  # one just handed back (a peek) may not be counted yet
            goal = min(total, limit) if limit is not None else total
            if wanted:
                goal = min(goal, len(wanted))
            for tag, props, body in self._take(channel, total if goal else 0):
                if len(result.replayed) >= goal or (wanted and props.message_id not in wanted):
                    continue  # held unacked and handed back at the end, so the DLQ keeps its order
                self._publish(out, props, body)
                channel.basic_ack(tag)
                result.replayed.append(props.message_id or "")
                if progress is not None:
                    progress(len(result.replayed), goal)
            self._hand_back(channel)
        result.missing = sorted(wanted - set(result.replayed))
        return result

    def _publish(self, channel: BlockingChannel, props: pika.BasicProperties, body: bytes) -> None:
        headers = {k: v for k, v in (props.headers or {}).items() if k not in REPLAY_DROPS}
        copy = pika.BasicProperties(
            content_type=props.content_type,
            delivery_mode=2,
            message_id=props.message_id,
            correlation_id=props.correlation_id,
            type=props.type,
            priority=props.priority,
            headers=headers or None,
        )
        try:
            channel.basic_publish(self.settings.exchange, self.queue, body, copy, mandatory=True)
        except pika.exceptions.UnroutableError:
            raise PublishNotConfirmed(
                f"replay of {props.message_id} was returned: no queue {self.queue!r} is bound on exchange "
                f"{self.settings.exchange!r}; the message stays in {self.name}"
            ) from None
        except pika.exceptions.NackError:
            raise PublishNotConfirmed(
                f"replay of {props.message_id} was refused by the broker (queue full?); it stays in {self.name}"
            ) from None

    def purge(self) -> int:
        """Delete every ready message of the DLQ; return how many."""
        with self._channel("dlq purge") as channel:
            self._count(channel)
            ok = channel.queue_purge(self.name)
            return int(ok.method.message_count)
