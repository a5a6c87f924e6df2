"""Messages a person can act on, for mistakes in options and settings.

A pydantic `ValidationError` prints its internals (`[type=int_parsing, input_value=...]` and a link to
pydantic's documentation); `describe()` says instead which option or setting is wrong, what was given
and what is allowed. An unknown name gets the closest known names, and a name Celery users reach for
(`acks_late`, `task_always_eager`, ...) gets what rabbittask does instead
(`docs/celery.md` has the whole table).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from rabbittask.urls import mask_url

# Celery's names for task options, send options and settings, and what to do here instead.
CELERY_HINTS: dict[str, str] = {
    "acks_late": "rabbittask always acks after the task finished (late ack): there is nothing to set",
    "reject_on_worker_lost": "a message whose worker died is redelivered (late ack); the queue's delivery_limit "
    "dead-letters one that keeps killing workers",
    "retries": "the option is max_retries",
    "default_retry_delay": "the option is retry_delay (seconds, used when retry_backoff=False)",
    "retry_kwargs": "give max_retries, retry_delay or retry_backoff as options of their own",
    "autoretry": "the option is autoretry_for=(SomeError, ...)",
    "serializer": "messages are always JSON (pickle is never accepted): there is nothing to choose",
    "routing_key": "the option is queue: a task's queue is its routing key",
    "exchange": "the exchange is the app setting `exchange` (RABBITTASK_EXCHANGE)",
    "track_started": "the app setting events_started=True sends a `started` event",
    "typing": "arguments are always validated against the signature (pydantic), before sending and in the worker",
    "base": "task classes are not used: give options to @app.task, or bind=True for the TaskContext",
    "expires": "expires is a send option: task.apply_async(args, expires=3600)",
    "countdown": "countdown is a send option: task.apply_async(args, countdown=60)",
    "priority": "priority is a send option (task.apply_async(args, priority=5)) on a queue declared with "
    "max_priority=10 (a quorum queue needs RabbitMQ 4.0+; queue_type='classic' works on any version)",
    "task_always_eager": "the setting is eager (RABBITTASK_EAGER), or `with app.eager():` in tests",
    "broker": "the setting is broker_url (RABBITTASK_BROKER_URL)",
    "result_expires": "the setting is result_expires_s (seconds)",
    "worker_prefetch_multiplier": "prefetch is per worker child: --prefetch or the app setting prefetch",
    "task_default_queue": "the setting is default_queue",
    "task_serializer": "messages are always JSON (pickle is never accepted): there is nothing to choose",
    "task_acks_late": "rabbittask always acks after the task finished (late ack): there is nothing to set",
}


def unknown_names(given: Iterable[str], known: Iterable[str], what: str) -> str:
    """`unknown option 'retries' (the option is max_retries)`; `unknown option 'qeue' (did you mean queue?)`."""
    known = sorted(known)
    parts = []
    for name in sorted(given):
        hint = CELERY_HINTS.get(name)
        if hint is None:
            close = difflib.get_close_matches(name, known, n=2, cutoff=0.7)
            hint = f"did you mean {' or '.join(close)}?" if close else ""
        parts.append(f"unknown {what} {name!r}" + (f" ({hint})" if hint else ""))
    return "; ".join(parts)


def describe(error: ValidationError, env_prefix: str = "", labels: dict[str, str] | None = None) -> str:
    """One part per field: `prefetch (RABBITTASK_PREFETCH): Input should be a valid integer (got 'many')`.

    Our own validators' messages are kept as raised (they name the field already); pydantic's are
    kept without their internals (no error codes, no documentation links). `labels` names a field
    otherwise, e.g. by its command-line flag.
    """
    by_field: dict[str, tuple[list[str], Any]] = {}
    for err in error.errors(include_url=False):
        loc = err["loc"]
        if err["type"] == "extra_forbidden":
            continue  # unknown names are reported by unknown_names, with suggestions
        ours = err["type"] == "value_error"  # raised by our validators: they name the value already
        why = str(err["ctx"]["error"]) if ours else err["msg"]
        name = str(loc[0]) if loc else ""  # a check of the whole model (several fields) has no field
        whys, _ = by_field.setdefault(name, ([], err.get("input") if loc and not ours else None))
        if why not in whys:
            whys.append(why)
    parts = []
    for name, (whys, given) in by_field.items():
        text = " or ".join(whys)
        label = (labels or {}).get(name) or (f"{name} ({env_prefix}{name.upper()})" if env_prefix else name)
        if name and not text.startswith(name):
            text = f"{label}: {text}"
        parts.append(f"{text} (got {mask_url(repr(given))})" if given is not None else text)
    return "; ".join(parts)


def extra_names(error: ValidationError) -> list[str]:
    """The names a model refused as unknown (`extra="forbid"`)."""
    return [str(e["loc"][0]) for e in error.errors(include_url=False) if e["type"] == "extra_forbidden" and e["loc"]]


def unknown_task_hint(name: str, tasks: Iterable[str]) -> str:
    """What to add to "task 'x' is not registered": the close names, and the likely cause."""
    known = list(tasks)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    found = f"did you mean {' or '.join(map(repr, close))}?" if close else f"{len(known)} task(s) known"
    return f" ({found}); is the worker running the same code as the sender?"
