"""Running one delivered message: decode, look up, validate, call; the outcome says how to settle it."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiormq.abc import DeliveredMessage

from rabbittask.errors import (
    ArgumentsInvalid,
    PayloadError,
    Reject,
    SoftTimeLimitExceeded,
    TaskNotFound,
    TimeLimitExceeded,
)
from rabbittask.message import (
    H_EXC_MESSAGE,
    H_EXC_TYPE,
    H_FAILED_AT,
    H_QUEUE,
    H_REASON,
    H_TRACEBACK,
    H_WORKER,
    decode_body,
)

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

    @property
    def ok(self) -> bool:
        return self.reason is None

    @property
    def message_id(self) -> str:
        return self.message.header.properties.message_id or "?"

    def failure_headers(self, queue: str, pid: int) -> dict[str, Any]:
        """The `rt-*` headers that tell why a message is in its dead-letter queue."""
        return {
            H_REASON: self.reason,
            H_EXC_TYPE: self.exc_type,
            H_EXC_MESSAGE: self.exc_message[:MESSAGE_CHARS],
            H_TRACEBACK: self.traceback[-TRACEBACK_CHARS:],
            H_WORKER: WORKER_ID.format(pid=pid),
            H_FAILED_AT: datetime.now(UTC).isoformat(timespec="milliseconds"),
            H_QUEUE: queue,
        }


def _failure(message: DeliveredMessage, name: str, reason: str, exc: BaseException, tb: bool) -> Outcome:
    if isinstance(exc, SoftTimeLimitExceeded):  # raised into the task, which let it escape
        reason = REASON_SOFT_TIME_LIMIT
    return Outcome(
        message,
        name,
        reason=reason,
        exc_type=type(exc).__name__,
        exc_message=str(exc) or "the task ran past its soft_time_limit",
        traceback="".join(traceback.format_exception(exc)) if tb else "",
    )


def prepare(app: App, message: DeliveredMessage) -> tuple[Task[Any, Any], tuple[Any, ...], dict[str, Any]] | Outcome:
    """The task and validated arguments of a message, or the failure that dead-letters it."""
    props = message.header.properties
    name = props.message_type or ""
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


def time_limit_outcome(message: DeliveredMessage, task: Task[Any, Any]) -> Outcome:
    """The failure of a sync task still running at its hard time limit (its thread is abandoned)."""
    exc = TimeLimitExceeded(f"task {task.name!r} ran past its time_limit of {task.time_limit:g} s")
    return _failure(message, task.name, REASON_TIME_LIMIT, exc, tb=False)


def soft_limit_outcome(message: DeliveredMessage, task: Task[Any, Any]) -> Outcome:
    """The failure of a sync task whose soft-limit exception arrived outside the task's own code."""
    exc = SoftTimeLimitExceeded(f"task {task.name!r} ran past its soft_time_limit of {task.soft_time_limit:g} s")
    return _failure(message, task.name, REASON_SOFT_TIME_LIMIT, exc, tb=False)


def run_sync(app: App, message: DeliveredMessage) -> Outcome:
    """Run a sync task (called in a worker thread)."""
    prepared = prepare(app, message)
    if isinstance(prepared, Outcome):
        return prepared
    task, args, kwargs = prepared
    start = time.perf_counter()
    try:
        value = task.fn(*args, **kwargs)
    except Reject as e:
        return _failure(message, task.name, REASON_REJECTED, e, tb=False)
    except Exception as e:  # noqa: BLE001 - a task's failure is data, not a crash of the worker
        return _failure(message, task.name, REASON_FAILED, e, tb=True)
    return Outcome(message, task.name, value=value, runtime_s=time.perf_counter() - start)


async def run_async(
    task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any], message: DeliveredMessage
) -> Outcome:
    """Run an async task on the child's event loop."""
    start = time.perf_counter()
    try:
        if task.time_limit is None and task.soft_time_limit is None:
            value = await task.fn(*args, **kwargs)
        else:
            value = await _limited(task, task.fn(*args, **kwargs))
    except Reject as e:
        return _failure(message, task.name, REASON_REJECTED, e, tb=False)
    except TimeLimitExceeded as e:
        return _failure(message, task.name, REASON_TIME_LIMIT, e, tb=False)
    except Exception as e:  # noqa: BLE001 - a task's failure is data, not a crash of the worker
        return _failure(message, task.name, REASON_FAILED, e, tb=True)
    return Outcome(message, task.name, value=value, runtime_s=time.perf_counter() - start)


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
