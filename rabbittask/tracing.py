"""Trace context in message headers (W3C `traceparent`), and OpenTelemetry spans with the `otel` extra.

Without `otel=True` nothing of OpenTelemetry is imported. A task whose message carries a
`traceparent` header passes it on unchanged to the tasks it sends, as a W3C participant that
records no spans does, so a trace begun by an instrumented caller goes on through the worker.

With `otel=True` (`RABBITTASK_OTEL=true`; needs opentelemetry-api, `pip install 'rabbittask[otel]'`)
each publish is a PRODUCER span whose context goes into the message's `traceparent`, and each run on
a worker a CONSUMER span, child of the context its message carries and current while the task
runs, so what the task sends continues the trace (`rabbittask/otel.py`). Spans go wherever the
process's TracerProvider sends them: configure one in each worker child with
`@app.on_worker_process_init` (docs/events.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from rabbittask.errors import ConfigError

if TYPE_CHECKING:
    from rabbittask.message import Outgoing
    from rabbittask.otel import Spans

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

# The trace context of the task running in this context, passed on as it came (no spans).
_incoming: ContextVar[Mapping[str, Any] | None] = ContextVar("rabbittask_trace_context", default=None)

spans: Spans | None = None
"""The OpenTelemetry span factory once `enable()` ran (an app with `otel=True`), else None."""


def enable() -> None:
    """Create spans from now on in this process; `ConfigError` when opentelemetry-api is missing."""
    global spans
    if spans is not None:
        return
    try:
        from rabbittask.otel import Spans
    except ImportError as e:
        raise ConfigError(
            f"otel=True (RABBITTASK_OTEL) needs OpenTelemetry, which is not installed ({e}): "
            "pip install 'rabbittask[otel]', or turn otel off"
        ) from None
    spans = Spans()


def inject(msg: Outgoing) -> None:
    """Give `msg` the trace context of the task running here, if it came with one (spans off)."""
    incoming = _incoming.get()
    if incoming is not None:
        msg.headers = {**(msg.headers or {}), **incoming}


@contextmanager
def publishing(msg: Outgoing, exchange: str) -> Iterator[None]:
    """Around a publish: a PRODUCER span whose context goes into `msg` (or nothing, spans off)."""
    if spans is None:
        yield
        return
    with spans.publish(msg, exchange):
        yield


@contextmanager
def running(task_name: str, queue: str, message: Any) -> Iterator[None]:
    """Around a task's run: a CONSUMER span, or (spans off) the message's trace context made current."""
    if spans is not None:
        with spans.process(task_name, queue, message):
            yield
        return
    headers = message.header.properties.headers or {}
    token = _incoming.set({k: _text(headers[k]) for k in (TRACEPARENT, TRACESTATE) if k in headers})
    try:
        yield
    finally:
        _incoming.reset(token)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
