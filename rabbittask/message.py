"""The wire format of a task message (docs/protocol.md is its specification).

A task is one AMQP message: `type` names the task, `message_id` is the task id, the body is
`{"v": 1, "args": [...], "kwargs": {...}}` as UTF-8 JSON with content type `application/json`.
Bookkeeping travels in `rt-*` headers so tools can read it without decoding the body; every
header name rabbittask writes is defined here. `Outgoing` is a message ready to publish,
independent of the client library that sends it (`amqp/properties.py` turns it into properties).
"""

from __future__ import annotations

import re
import reprlib
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from pydantic_core import PydanticSerializationError, from_json, to_json

from rabbittask.delays import delay_entry
from rabbittask.errors import PayloadError, PublishNotConfirmed
from rabbittask.settings import mask_url

PROTOCOL_VERSION = 1
CONTENT_TYPE = "application/json"
ACCEPTED_CONTENT_TYPES = frozenset({CONTENT_TYPE, "application/json; charset=utf-8"})

# Headers rabbittask writes; all start with "rt-" so they cannot clash with the broker's "x-" ones.
H_ATTEMPT = "rt-attempt"
H_REASON = "rt-reason"
H_EXC_TYPE = "rt-exc-type"
H_EXC_MESSAGE = "rt-exc-message"
H_TRACEBACK = "rt-traceback"
H_WORKER = "rt-worker"
H_FAILED_AT = "rt-failed-at"
H_QUEUE = "rt-queue"
H_FIRST_SEEN = "rt-first-seen"
H_EXPIRES = "rt-expires"
H_ETA = "rt-eta"
H_DELIVERY_COUNT = "rt-delivery-count"
H_SIGNATURE = "rt-signature"  # signing.py
# The key of a task on a partitioned queue; the consistent-hash exchange hashes it (partitions.py).
H_PARTITION_KEY = "rt-partition-key"
# Set on a copy a publisher sent again because the first one's confirm never came (its connection
# closed, or no confirm in time): the first may have been enqueued too. The value counts the re-sends.
H_RESENT = "rt-resent"
# Headers of a beat tick (beat/scheduler.py); a tick's `rt-expires` is read like any task's.
H_SCHEDULE = "rt-schedule"
H_SLOT = "rt-slot"
H_FIRED_AT = "rt-fired-at"
X_DELIVERY_COUNT = "x-delivery-count"
# Headers the broker writes. A copy re-published with them (a retry through the delay ladder) can
# be taken for a dead-letter cycle on its next pass and dropped silently, though confirmed.
DEATH_HEADERS = frozenset(
    {
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
        X_DELIVERY_COUNT,
    }
)


@dataclass(slots=True)
class Outgoing:
    """One task message: routing key (the queue), JSON body and the AMQP properties rabbittask sets."""

    routing_key: str
    body: bytes
    message_id: str
    task_name: str
    priority: int | None = None
    headers: dict[str, Any] | None = None
    reply_to: str | None = None
    correlation_id: str | None = None
    content_type: str = CONTENT_TYPE
    exchange: str | None = None  # None: the app's task exchange
    # Direct replies go out without `mandatory`: RabbitMQ 3.x returns them as unroutable although it delivered them.
    mandatory: bool = True
    # > 0: publish into the delay ladder, due for `routing_key` (the task queue) after this long.
    delay_ms: int = 0
    # The broker dead-letters it (reason `expired`) if no consumer took it this long after it was queued.
    expiration_ms: int | None = None


def resent(msg: Outgoing) -> Outgoing:
    """`msg` to publish again after its confirm never came: the same id, marked with `rt-resent`."""
    headers = dict(msg.headers or {})
    headers[H_RESENT] = int(headers.get(H_RESENT, 0)) + 1
    return replace(msg, headers=headers)


def publish_target(msg: Outgoing, exchange: str) -> tuple[str, str]:
    """Exchange and routing key of `msg`: the task exchange (or its own), or the delay ladder's entry."""
    if msg.delay_ms > 0:
        return delay_entry(exchange, msg.routing_key, msg.delay_ms)
    return (exchange if msg.exchange is None else msg.exchange), msg.routing_key


def missing_exchange(msg: Outgoing, exchange: str, reply: str) -> PublishNotConfirmed:
    """The error for a publish to an exchange the broker does not have (it closes the channel with 404)."""
    return PublishNotConfirmed(
        f"task {msg.task_name!r} (id {msg.message_id}) was not published: exchange {exchange!r} does not exist on "
        f"the broker ({mask_url(reply)}). Declare the topology (start a worker or run `rabbittask topology apply`) "
        "or check the exchange setting"
    )


def new_id() -> str:
    """A new task id."""
    return str(uuid.uuid4())


def encode_body(args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> bytes:
    """Encode call arguments as the JSON body of a task message."""
    try:
        return to_json({"v": PROTOCOL_VERSION, "args": args, "kwargs": kwargs})
    except PydanticSerializationError as e:
        raise PayloadError(f"arguments cannot be sent as JSON: {e}") from e


@dataclass(frozen=True, slots=True)
class Body:
    """The decoded body of a task message."""

    args: list[Any]
    kwargs: dict[str, Any]


def decode_body(body: bytes, content_type: str | None) -> Body:
    """Decode a task message body; raise `PayloadError` saying what is wrong with it."""
    if content_type not in ACCEPTED_CONTENT_TYPES:
        raise PayloadError(f"content type {content_type!r} is not accepted: rabbittask reads only {CONTENT_TYPE}")
    try:
        data = from_json(body)
    except ValueError as e:
        raise PayloadError(f"body is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise PayloadError(f"body must be a JSON object, got {type(data).__name__}")
    version = data.get("v", PROTOCOL_VERSION)
    if version != PROTOCOL_VERSION:
        raise PayloadError(f"protocol version {version!r} is not supported (this worker reads {PROTOCOL_VERSION})")
    args, kwargs = data.get("args", []), data.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise PayloadError("body needs 'args' as a JSON array and 'kwargs' as a JSON object")
    return Body(args, kwargs)


def format_time(epoch_s: float) -> str:
    """A time as rabbittask writes it in headers: ISO 8601, UTC, milliseconds."""
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")


def parse_time(value: Any) -> float | None:
    """A header time as epoch seconds: ISO 8601 text (UTC if no offset), or a number of seconds; else None.

    Never raises: a time out of range (year 1 with an offset, 10**400 seconds), NaN or infinity is None too.
    """
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    try:
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if isinstance(value, datetime):  # also an AMQP timestamp field
            seconds = (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
        elif isinstance(value, int | float | Decimal) and not isinstance(value, bool):
            seconds = float(value)
        else:
            return None
        datetime.fromtimestamp(seconds, UTC)  # years 1 to 9999 UTC only: a time outside cannot be written back
    except (ValueError, OverflowError, OSError):
        return None
    return seconds


def header_time(headers: dict[str, Any], name: str) -> float | None:
    """The time in header `name` as epoch seconds; None if absent; `PayloadError` if present but unreadable.

    A deadline (`rt-expires`) or due time (`rt-eta`) the worker cannot read must not be ignored: the task
    would run after its deadline or before its time. The caller dead-letters the message with this reason.
    """
    value = headers.get(name)
    if value is None:
        return None
    when = parse_time(value)
    if when is not None:
        return when
    shown = reprlib.repr(value)  # bounded: a header may be a huge or deeply nested table
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    number = isinstance(text, str) and re.fullmatch(r"\s*[+-]?\d+(\.\d*)?\s*", text) is not None
    hint = " (epoch seconds must be sent as an AMQP number, not as text)" if number else ""
    raise PayloadError(
        f"header {name} {shown} ({type(value).__name__}) cannot be read as a time{hint}: send ISO 8601 text "
        "such as 2026-12-07T10:00:00+00:00, or epoch seconds as a number; the message was not run"
    )


def attempt_of(headers: dict[str, Any] | None) -> int:
    """Which run of its task a message is (1 = the first); `rt-attempt`, absent on a first run."""
    value = headers.get(H_ATTEMPT, 1) if headers else 1
    return value if isinstance(value, int) and value >= 1 else 1


# What a worker writes besides the attempt count when it dead-letters a message (the H_* names above);
# a replay from the DLQ removes them.
FAILURE_HEADERS = frozenset({H_REASON, H_EXC_TYPE, H_EXC_MESSAGE, H_TRACEBACK, H_WORKER, H_FAILED_AT, H_QUEUE})
