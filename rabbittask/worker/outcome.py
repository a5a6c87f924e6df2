"""What happened to one delivered message, and what that means for settling it.

`Reason` says why a message did not simply succeed. Each reason carries its meaning, so no other
module keeps a list of them: whether the task's code ran (`ran`), how the message is settled
(`settlement`), and the state its task event reports (`event_state`). A new way for a message to end
is one more member here. The value of a reason is the text that goes into the `rt-reason` header,
result records and events, so it must not change.

`Outcome` is immutable: the settler makes a new one when it changes its mind (a result that cannot
be serialised fails the task). It is a `NamedTuple` rather than a frozen dataclass because one is built
for every message: a frozen dataclass sets each field through `object.__setattr__`, which costs
0.8 µs per message more (about 1.5% of a no-op task's whole cost in a drain); a named tuple costs
what the old mutable dataclass did.
"""

from __future__ import annotations

import enum
import socket
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

from aiormq.abc import DeliveredMessage

from rabbittask.message import (
    DEATH_HEADERS,
    H_ATTEMPT,
    H_DELIVERY_COUNT,
    H_EXC_MESSAGE,
    H_EXC_TYPE,
    H_FAILED_AT,
    H_FIRST_SEEN,
    H_QUEUE,
    H_REASON,
    H_RESENT,
    H_TRACEBACK,
    H_WORKER,
    attempt_of,
    format_time,
)

TRACEBACK_CHARS = 4000
COPY_DROPS = frozenset({H_DELIVERY_COUNT, H_RESENT})  # headers of one delivery or one send, not of a copy
MESSAGE_CHARS = 1000
WORKER_ID = f"{socket.gethostname()}:{{pid}}"


class Settlement(enum.Enum):
    """How the settler ends a delivery (a success is acked, or replied to / stored first, then acked)."""

    DEAD_LETTER = "dead-letter"  # a copy with the reason headers to the dead-letter exchange, confirmed, then ack
    REPUBLISH = "republish"  # a copy back to the task queue (after a delay), confirmed, then ack
    REQUEUE = "requeue"  # nack with requeue: it never started and goes back to the head of its queue
    FORGET = "forget"  # nothing to send: its channel closed, so the broker has requeued it already
    ACK = "ack"  # acked unrun: another copy of it ran (or runs) already


class Reason(enum.StrEnum):
    """Why a message did not simply succeed; the value is the text of its `rt-reason` header."""

    ran: bool
    settlement: Settlement
    event_state: str | None

    def __new__(cls, text: str, ran: bool, settlement: Settlement, event_state: str | None) -> Reason:
        member = str.__new__(cls, text)
        member._value_ = text
        member.ran = ran
        member.settlement = settlement
        member.event_state = event_state
        return member

    # The task ran and failed: dead-lettered with a `failed` event (and a `dead-lettered` one).
    FAILED = "task raised", True, Settlement.DEAD_LETTER, "failed"
    REJECTED = "rejected by task", True, Settlement.DEAD_LETTER, "failed"
    NOT_SERIALISABLE = "result not JSON-serialisable", True, Settlement.DEAD_LETTER, "failed"
    MAX_RETRIES = "max retries exceeded", True, Settlement.DEAD_LETTER, "failed"
    TIME_LIMIT = "time limit", True, Settlement.DEAD_LETTER, "failed"
    SOFT_TIME_LIMIT = "soft time limit", True, Settlement.DEAD_LETTER, "failed"
    TERMINATED = "terminated", True, Settlement.DEAD_LETTER, "failed"  # revoked with terminate=True while it ran
    # Dead-lettered without running the task's code: only a `dead-lettered` event.
    MALFORMED = "malformed message", False, Settlement.DEAD_LETTER, "dead-lettered"
    UNKNOWN = "unknown task", False, Settlement.DEAD_LETTER, "dead-lettered"
    INVALID = "invalid arguments", False, Settlement.DEAD_LETTER, "dead-lettered"
    SIGNATURE = "signature invalid", False, Settlement.DEAD_LETTER, "dead-lettered"
    # A Celery message this worker does not run (pickle or another format than JSON, a chord): see celery/.
    NOT_ACCEPTED = "celery message not accepted", False, Settlement.DEAD_LETTER, "dead-lettered"
    EXPIRED = "expired", False, Settlement.DEAD_LETTER, "dead-lettered"
    DELIVERY_LIMIT = "delivery limit", False, Settlement.DEAD_LETTER, "dead-lettered"
    REVOKED = "revoked", False, Settlement.DEAD_LETTER, "dead-lettered"  # revoked before it started (revoke.py)
    # Not failures: the message is re-published (retry, not due yet, classic redelivery count).
    RETRY = "retry", True, Settlement.REPUBLISH, "retried"
    NOT_DUE = "not due", False, Settlement.REPUBLISH, None
    REDELIVERED = "redelivered", False, Settlement.REPUBLISH, None
    # Not run: a copy with the same id and attempt ran within the task's `dedupe_s` (see dedupe.py).
    DUPLICATE = "duplicate", False, Settlement.ACK, "duplicate"
    # Never started here: no event, not counted as a task.
    STALE = "stale delivery", False, Settlement.FORGET, None  # its channel closed before it started
    HANDED_BACK = "handed back", False, Settlement.REQUEUE, None  # a warm shutdown came before it started


@dataclass(frozen=True, slots=True)
class Republish:
    """Instead of acking: publish a copy to the task queue after `delay_s`, with `headers` set, then ack."""

    delay_s: float
    headers: dict[str, Any]


class Outcome(NamedTuple):
    """What happened to one message; `reason` is None on success. `republish` goes with REPUBLISH reasons."""

    message: DeliveredMessage
    task_name: str
    value: Any = None
    reason: Reason | None = None
    exc_type: str = ""
    exc_message: str = ""
    traceback: str = ""
    runtime_s: float = 0.0
    republish: Republish | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    @property
    def message_id(self) -> str:
        return self.message.header.properties.message_id or "?"

    def failure_headers(self, queue: str, pid: int) -> dict[str, Any]:
        """The `rt-*` headers that tell why a message is in its dead-letter queue."""
        now = time.time()
        headers = self.message.header.properties.headers
        return {
            H_REASON: self.reason.value if self.reason is not None else None,
            H_EXC_TYPE: self.exc_type,
            H_EXC_MESSAGE: self.exc_message[:MESSAGE_CHARS],
            H_TRACEBACK: self.traceback[-TRACEBACK_CHARS:],
            H_WORKER: WORKER_ID.format(pid=pid),
            H_FAILED_AT: format_time(now),
            H_QUEUE: queue,
            H_ATTEMPT: attempt_of(headers),
            H_FIRST_SEEN: (headers or {}).get(H_FIRST_SEEN) or format_time(now - self.runtime_s),
        }

    def copy_headers(self, updates: dict[str, Any]) -> dict[str, Any]:
        """Headers of a copy re-published to the task queue: without the broker's, with `updates`.

        The broker's `x-death` must go: a copy that passes the delay ladder again with it is taken
        for a dead-letter cycle and dropped silently. `rt-delivery-count` counts deliveries of one
        message, so a copy starts without it unless `updates` sets it; a copy is a new message, sent once,
        so it drops `rt-resent` too. `rt-first-seen` records the
        first run.
        """
        old = self.message.header.properties.headers or {}
        headers = {k: v for k, v in old.items() if k not in DEATH_HEADERS and k not in COPY_DROPS}
        headers.setdefault(H_FIRST_SEEN, format_time(time.time() - self.runtime_s))
        headers.update(updates)
        return headers
