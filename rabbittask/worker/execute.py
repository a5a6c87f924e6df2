"""Running one delivered message: decode, look up, validate, call; the `Outcome` says how to settle it."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import traceback
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiormq.abc import DeliveredMessage

from rabbittask import tracing
from rabbittask.celery.delivery import CeleryDelivery
from rabbittask.celery.protocol import CeleryMessageError, is_celery
from rabbittask.context import TaskContext, running
from rabbittask.control.local import REVOKED, RUNS
from rabbittask.delays import delivered_queue
from rabbittask.errors import (
    ArgumentsInvalid,
    PayloadError,
    Reject,
    Retry,
    SignatureInvalid,
    SoftTimeLimitExceeded,
    TaskNotFound,
    TaskRevoked,
    TimeLimitExceeded,
)
from rabbittask.message import (
    H_ATTEMPT,
    H_DELIVERY_COUNT,
    H_RESENT,
    X_DELIVERY_COUNT,
    Body,
    attempt_of,
    decode_body,
)
from rabbittask.progress import H_PROGRESS_REPLY
from rabbittask.retry import due_in_ms
from rabbittask.signing import verify
from rabbittask.tracing import TRACEPARENT
from rabbittask.worker.outcome import Outcome, Reason, Republish

if TYPE_CHECKING:
    from rabbittask.app import App
    from rabbittask.task import Task

log = logging.getLogger(__name__)


_WORKER_DIR = os.path.dirname(os.path.abspath(__file__))


def task_traceback(exc: BaseException) -> str:
    """The traceback from the task's own code on: the worker's frames that called it say nothing to its author."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None and tb.tb_frame.f_code.co_filename.startswith(_WORKER_DIR):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _failure(
    message: DeliveredMessage,
    name: str,
    reason: Reason,
    exc: BaseException,
    tb: bool,
    runtime_s: float = 0.0,
    republish: Republish | None = None,
) -> Outcome:
    return Outcome(
        message,
        name,
        reason=reason,
        exc_type=type(exc).__name__,
        exc_message=str(exc)
        or ("the task ran past its soft_time_limit" if isinstance(exc, SoftTimeLimitExceeded) else ""),
        traceback=task_traceback(exc) if tb else "",
        runtime_s=runtime_s,
        republish=republish,
    )


def prepare(app: App, message: DeliveredMessage) -> tuple[Task[Any, Any], tuple[Any, ...], dict[str, Any]] | Outcome:
    """The task and validated arguments of a message, or the failure that dead-letters it."""
    props = message.header.properties
    name = props.message_type or ""
    if REVOKED.ids and props.message_id in REVOKED.ids:  # revoked while it waited here for its turn (see revoke.py)
        return revoked_outcome(message)
    try:
        if app.settings.signing_keys:  # before decoding: an unverified body is never parsed
            verify(app.settings.signing_keys, name, props.message_id or "", props.headers, message.body)
    except SignatureInvalid as e:
        return _failure(message, name, Reason.SIGNATURE, e, tb=False)
    try:
        if type(message) is CeleryDelivery:  # a Celery message, decoded when it was delivered
            if message.request is None:
                return _failure(message, name, Reason.NOT_ACCEPTED, CeleryMessageError(message.error), tb=False)
            body = Body(message.request.args, message.request.kwargs)
        else:
            body = decode_body(message.body, props.content_type)
        task = app.get_task(name)
        args, kwargs = task.validate(body.args, body.kwargs)
    except PayloadError as e:
        if is_celery(props.headers):  # a Celery message where no task accepts them
            return _failure(message, name, Reason.MALFORMED, _not_accepting(props.headers or {}), tb=False)
        return _failure(message, name, Reason.MALFORMED, e, tb=False)
    except TaskNotFound as e:
        return _failure(message, name, Reason.UNKNOWN, e, tb=False)
    except ArgumentsInvalid as e:
        return _failure(message, name, Reason.INVALID, e, tb=False)
    return task, args, kwargs


def revoked_outcome(message: DeliveredMessage) -> Outcome:
    """The outcome of a message revoked before it started: dead-lettered with `rt-reason: revoked`, never run."""
    props = message.header.properties
    exc = TaskRevoked(f"task {props.message_type!r} (id {props.message_id}) was revoked before it started")
    return _failure(message, props.message_type or "", Reason.REVOKED, exc, tb=False)


def _not_accepting(headers: Mapping[str, Any]) -> PayloadError:
    return PayloadError(
        f"a Celery message (task {headers.get('task')!r}) on a queue whose tasks do not accept Celery messages: "
        "declare them with accept_celery=True (or App(..., accept_celery=True))"
    )


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
    reply_to, correlation_id = props.reply_to, props.correlation_id
    reply = (reply_to, correlation_id) if headers.get(H_PROGRESS_REPLY) and reply_to and correlation_id else None
    return TaskContext(
        props.message_id or "",
        task.name,
        source_queue(app, message),
        attempt_of(headers),
        headers,
        redelivered,
        H_RESENT in headers,
        count,
        reply,
    )


def delivery_of(message: DeliveredMessage, headers: Mapping[str, Any]) -> tuple[bool, int]:
    """Was this message delivered before without being settled, and which delivery is this (1 the first)?

    A quorum queue counts returns in `x-delivery-count`. A classic queue counts nothing: the worker
    re-publishes a redelivered message with `rt-delivery-count` (see redelivery.py), so that copy arrives
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
    props = message.header.properties
    headers = props.headers
    token = running.set((task.name, props.message_id or "?"))  # task loggers, and no blocking .call() inside
    run = RUNS.start(message, task.name, args, kwargs)  # for `inspect active` and `terminate=True`
    start = time.perf_counter()
    try:
        if tracing.spans is None and not (headers and TRACEPARENT in headers):
            value = task.fn(*args, **kwargs)
        else:
            with tracing.running(task.name, source_queue(app, message), message):
                value = task.fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - a task's failure is data, not a crash of the worker
        RUNS.end(run, failed=True)
        return failed(message, task, e, time.perf_counter() - start)
    finally:
        running.reset(token)
    RUNS.end(run, failed=False)
    return Outcome(message, task.name, value=value, runtime_s=time.perf_counter() - start)


async def run_async(
    task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any], message: DeliveredMessage
) -> Outcome:
    """Run an async task on the child's event loop."""
    if task.bind:
        args = (context(task.app, task, message), *args)
    props = message.header.properties
    headers = props.headers
    token = running.set((task.name, props.message_id or "?"))  # in this message's own asyncio task
    run = RUNS.start(message, task.name, args, kwargs, asyncio.current_task())  # `inspect active`; terminate cancels
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
        RUNS.end(run, failed=True)
        return failed(message, task, e, time.perf_counter() - start)
    except asyncio.CancelledError:
        RUNS.end(run, failed=True)
        current = asyncio.current_task()
        if not run.terminating or current is None:
            raise
        current.uncancel()  # cancelled by revoke(terminate=True), not by the worker's shutdown
        exc = TaskRevoked(f"task {task.name!r} (id {props.message_id}) was revoked with terminate=True")
        return failed(message, task, exc, time.perf_counter() - start)
    finally:
        running.reset(token)
    RUNS.end(run, failed=False)
    return Outcome(message, task.name, value=value, runtime_s=time.perf_counter() - start)


async def _call_async(task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if task.time_limit is None and task.soft_time_limit is None:
        return await task.fn(*args, **kwargs)
    return await _limited(task, task.fn(*args, **kwargs))


def failed(message: DeliveredMessage, task: Task[Any, Any], exc: Exception, runtime_s: float) -> Outcome:
    """The outcome of a run that raised: rejected, retried, or dead-lettered with the traceback."""
    if isinstance(exc, Reject):
        return _failure(message, task.name, Reason.REJECTED, exc, tb=False, runtime_s=runtime_s)
    if isinstance(exc, TaskRevoked):  # before the retry policy: a revoked task is never retried
        return _failure(message, task.name, Reason.TERMINATED, exc, tb=False, runtime_s=runtime_s)
    if isinstance(exc, Retry) or task.retry_policy.retries_on(exc):
        return _retry(message, task, exc, runtime_s)
    if isinstance(exc, TimeLimitExceeded):
        return _failure(message, task.name, Reason.TIME_LIMIT, exc, tb=False, runtime_s=runtime_s)
    if isinstance(exc, SoftTimeLimitExceeded):  # raised into the task, which let it escape
        return _failure(message, task.name, Reason.SOFT_TIME_LIMIT, exc, tb=True, runtime_s=runtime_s)
    return _failure(message, task.name, Reason.FAILED, exc, tb=True, runtime_s=runtime_s)


def _retry(message: DeliveredMessage, task: Task[Any, Any], exc: Exception, runtime_s: float) -> Outcome:
    request = exc if isinstance(exc, Retry) else None
    cause = request.exc if request is not None and request.exc is not None else exc
    attempt = attempt_of(message.header.properties.headers)
    limit = task.retry_policy.max_retries
    if request is not None and request.max_retries is not None:
        limit = request.max_retries
    if limit is not None and attempt > limit:  # attempt n has had n-1 retries
        return _failure(message, task.name, Reason.MAX_RETRIES, cause, tb=True, runtime_s=runtime_s)
    if request is not None and (request.countdown is not None or request.eta is not None):
        delay_s = due_in_ms(request.countdown, request.eta) / 1000.0
    else:
        delay_s = task.retry_policy.delay_s(attempt)
    republish = Republish(delay_s, {H_ATTEMPT: attempt + 1})
    return _failure(message, task.name, Reason.RETRY, cause, tb=False, runtime_s=runtime_s, republish=republish)


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
