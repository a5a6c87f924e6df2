"""Running one delivered message: decode, look up, validate, call; the outcome says how to settle it."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiormq.abc import DeliveredMessage

from rabbittask import tracing
from rabbittask.context import TaskContext
from rabbittask.errors import (
    ArgumentsInvalid,
    PayloadError,
    Reject,
    Retry,
    SignatureInvalid,
    SoftTimeLimitExceeded,
    TaskNotFound,
    TimeLimitExceeded,
)
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
    H_TRACEBACK,
    H_WORKER,
    X_DELIVERY_COUNT,
    attempt_of,
    decode_body,
    format_time,
)
from rabbittask.retry import due_in_ms
from rabbittask.signing import verify
from rabbittask.topology import delivered_queue
from rabbittask.tracing import TRACEPARENT

if TYPE_CHECKING:
    from rabbittask.app import App
    from rabbittask.task import Task

log = logging.getLogger(__name__)

TRACEBACK_CHARS = 4000
MESSAGE_CHARS = 1000
WORKER_ID = f"{socket.gethostname()}:{{pid}}"

REASON_FAILED = "task raised"
REASON_MALFORMED = "malformed message"
REASON_UNKNOWN = "unknown task"
REASON_INVALID = "invalid arguments"
REASON_REJECTED = "rejected by task"
REASON_NOT_SERIALISABLE = "result not JSON-serialisable"
REASON_MAX_RETRIES = "max retries exceeded"
REASON_EXPIRED = "expired"
REASON_DELIVERY_LIMIT = "delivery limit"
REASON_SIGNATURE = "signature invalid"
# Not failures: the message is re-published (retry, not due yet, classic redelivery count).
REASON_RETRY = "retry"
REASON_NOT_DUE = "not due"
REASON_REDELIVERED = "redelivered"


@dataclass(frozen=True, slots=True)
class Republish:
    """Instead of acking: publish a copy to the task queue after `delay_s`, with `headers` set, then ack."""

    delay_s: float
    headers: dict[str, Any]


REASON_TIME_LIMIT = "time limit"
REASON_SOFT_TIME_LIMIT = "soft time limit"


@dataclass(slots=True)
class Outcome:
    """What happened to one message; `reason` is None on success."""

    message: DeliveredMessage
    task_name: str
    value: Any = None
    reason: str | None = None
    exc_type: str = ""
    exc_message: str = ""
    traceback: str = ""
    runtime_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
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
            H_REASON: self.reason,
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
        message, so a copy starts without it unless `updates` sets it. `rt-first-seen` records the
        first run.
        """
        old = self.message.header.properties.headers or {}
        headers = {k: v for k, v in old.items() if k not in DEATH_HEADERS and k != H_DELIVERY_COUNT}
        headers.setdefault(H_FIRST_SEEN, format_time(time.time() - self.runtime_s))
        headers.update(updates)
        return headers


def _failure(message: DeliveredMessage, name: str, reason: str, exc: BaseException, tb: bool) -> Outcome:
    return Outcome(
        message,
        name,
        reason=reason,
        exc_type=type(exc).__name__,
        exc_message=str(exc)
        or ("the task ran past its soft_time_limit" if isinstance(exc, SoftTimeLimitExceeded) else ""),
        traceback="".join(traceback.format_exception(exc)) if tb else "",
    )


def prepare(app: App, message: DeliveredMessage) -> tuple[Task[Any, Any], tuple[Any, ...], dict[str, Any]] | Outcome:
    """The task and validated arguments of a message, or the failure that dead-letters it."""
    props = message.header.properties
    name = props.message_type or ""
    try:
        if app.settings.signing_keys:  # before decoding: an unverified body is never parsed
            verify(app.settings.signing_keys, name, props.message_id or "", props.headers, message.body)
    except SignatureInvalid as e:
        return _failure(message, name, REASON_SIGNATURE, e, tb=False)
    try:
        body = decode_body(message.body, props.content_type)
        task = app.get_task(name)
        args, kwargs = task.validate(body.args, body.kwargs)
    except PayloadError as e:
        return _failure(message, name, REASON_MALFORMED, e, tb=False)
    except TaskNotFound as e:
        return _failure(message, name, REASON_UNKNOWN, e, tb=False)
    except ArgumentsInvalid as e:
        return _failure(message, name, REASON_INVALID, e, tb=False)
    return task, args, kwargs


def source_queue(app: App, message: DeliveredMessage) -> str:
    """The task queue a consumed message came from (also when the delay ladder delivered it)."""
    deliver = message.delivery
    exchange, routing_key = getattr(deliver, "exchange", None), getattr(deliver, "routing_key", None)
    return delivered_queue(app.settings.exchange, exchange, routing_key)


def context(app: App, task: Task[Any, Any], message: DeliveredMessage) -> TaskContext:
    """The `TaskContext` a `bind=True` task gets as its first argument."""
    props = message.header.properties
    headers = props.headers or {}
    redelivered, count = delivery_of(message, headers)
    return TaskContext(
        props.message_id or "", task.name, source_queue(app, message), attempt_of(headers), headers, redelivered, count
    )


def delivery_of(message: DeliveredMessage, headers: Mapping[str, Any]) -> tuple[bool, int]:
    """Was this message delivered before without being settled, and which delivery is this (1 the first)?

    A quorum queue counts returns in `x-delivery-count`. A classic queue counts nothing: the worker
    re-publishes a redelivered message with `rt-delivery-count` (see admit.py), so that copy arrives
    with the broker's flag clear but is a redelivery all the same; a redelivery it did not count (no
    `delivery_limit`) is at least the second.
    """
    flag = bool(getattr(message.delivery, "redelivered", False))
    returns = headers.get(X_DELIVERY_COUNT)
    if not isinstance(returns, int):
        counted = headers.get(H_DELIVERY_COUNT)
        returns = (counted if isinstance(counted, int) else 0) + flag
    return flag or returns > 0, returns + 1


def time_limit_outcome(message: DeliveredMessage, task: Task[Any, Any], runtime_s: float) -> Outcome:
    """The outcome of a sync task still running at its hard time limit (its thread is abandoned)."""
    exc = TimeLimitExceeded(f"task {task.name!r} ran past its time_limit of {task.time_limit:g} s")
    return failed(message, task, exc, runtime_s)


def soft_limit_outcome(message: DeliveredMessage, task: Task[Any, Any], runtime_s: float) -> Outcome:
    """The outcome of a sync task whose soft-limit exception arrived outside the task's own code."""
    exc = SoftTimeLimitExceeded(f"task {task.name!r} ran past its soft_time_limit of {task.soft_time_limit:g} s")
    return failed(message, task, exc, runtime_s)


def run_sync(app: App, message: DeliveredMessage) -> Outcome:
    """Run a sync task (called in a worker thread)."""
    prepared = prepare(app, message)
    if isinstance(prepared, Outcome):
        return prepared
    task, args, kwargs = prepared
    if task.bind:
        args = (context(app, task, message), *args)
    headers = message.header.properties.headers
    start = time.perf_counter()
    try:
        if tracing.spans is None and not (headers and TRACEPARENT in headers):
            value = task.fn(*args, **kwargs)
        else:
            with tracing.running(task.name, source_queue(app, message), message):
                value = task.fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - a task's failure is data, not a crash of the worker
        return failed(message, task, e, time.perf_counter() - start)
    return Outcome(message, task.name, value=value, runtime_s=time.perf_counter() - start)


async def run_async(
    task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any], message: DeliveredMessage
) -> Outcome:
    """Run an async task on the child's event loop."""
    if task.bind:
        args = (context(task.app, task, message), *args)
    headers = message.header.properties.headers
    start = time.perf_counter()
    try:
        if tracing.spans is not None or (headers and TRACEPARENT in headers):
            with tracing.running(task.name, source_queue(task.app, message), message):
                value = await _call_async(task, args, kwargs)
        elif task.time_limit is None and task.soft_time_limit is None:
            value = await task.fn(*args, **kwargs)
        else:
            value = await _limited(task, task.fn(*args, **kwargs))
    except Exception as e:  # noqa: BLE001 - a task's failure is data, not a crash of the worker
        return failed(message, task, e, time.perf_counter() - start)
    return Outcome(message, task.name, value=value, runtime_s=time.perf_counter() - start)


async def _call_async(task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if task.time_limit is None and task.soft_time_limit is None:
        return await task.fn(*args, **kwargs)
    return await _limited(task, task.fn(*args, **kwargs))


def failed(message: DeliveredMessage, task: Task[Any, Any], exc: Exception, runtime_s: float) -> Outcome:
    """The outcome of a run that raised: rejected, retried, or dead-lettered with the traceback."""
    if isinstance(exc, Reject):
        outcome = _failure(message, task.name, REASON_REJECTED, exc, tb=False)
    elif isinstance(exc, Retry) or task.retry_policy.retries_on(exc):
        outcome = _retry(message, task, exc)
    elif isinstance(exc, TimeLimitExceeded):
        outcome = _failure(message, task.name, REASON_TIME_LIMIT, exc, tb=False)
    elif isinstance(exc, SoftTimeLimitExceeded):  # raised into the task, which let it escape
        outcome = _failure(message, task.name, REASON_SOFT_TIME_LIMIT, exc, tb=True)
    else:
        outcome = _failure(message, task.name, REASON_FAILED, exc, tb=True)
    outcome.runtime_s = runtime_s
    return outcome


def _retry(message: DeliveredMessage, task: Task[Any, Any], exc: Exception) -> Outcome:
    request = exc if isinstance(exc, Retry) else None
    cause = request.exc if request is not None and request.exc is not None else exc
    attempt = attempt_of(message.header.properties.headers)
    limit = task.retry_policy.max_retries
    if request is not None and request.max_retries is not None:
        limit = request.max_retries
    if limit is not None and attempt > limit:  # attempt n has had n-1 retries
        return _failure(message, task.name, REASON_MAX_RETRIES, cause, tb=True)
    if request is not None and (request.countdown is not None or request.eta is not None):
        delay_s = due_in_ms(request.countdown, request.eta) / 1000.0
    else:
        delay_s = task.retry_policy.delay_s(attempt)
    outcome = _failure(message, task.name, REASON_RETRY, cause, tb=False)
    outcome.republish = Republish(delay_s, {H_ATTEMPT: attempt + 1})
    return outcome


async def _limited(task: Task[Any, Any], coro: Any) -> Any:
    """Await `coro` under the task's limits: cancelled at each, reported as the matching exception."""
    hard = asyncio.timeout(task.time_limit)
    try:
        async with hard:
            soft = asyncio.timeout(task.soft_time_limit)
            try:
                async with soft:
                    return await coro
            except TimeoutError:
                if not soft.expired():
                    raise  # the task's own TimeoutError
                raise SoftTimeLimitExceeded(
                    f"task {task.name!r} was cancelled at its soft_time_limit of {task.soft_time_limit:g} s"
                ) from None
    except TimeoutError:
        if not hard.expired():
            raise
        raise TimeLimitExceeded(
            f"task {task.name!r} was cancelled at its time_limit of {task.time_limit:g} s"
        ) from None
