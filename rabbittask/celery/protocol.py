"""Celery's message protocol version 2 with the JSON serializer, as pure functions (no I/O, no state).

A Celery task message: headers `lang`, `task`, `id`, `eta`, `expires`, `retries`, `timelimit`,
`root_id`, `parent_id`, `group`, ...; properties `correlation_id` (the id), `content_type`,
`content_encoding`, `reply_to`; body `[args, kwargs, {"callbacks", "errbacks", "chain", "chord"}]`.
A result: `{"task_id", "status", "result", "traceback", "children", "date_done"}`, a failure's
result being `{"exc_type", "exc_message": [...], "exc_module"}`.

`decode_request` never loads anything but JSON: a pickled (or any other) body is refused by its
content type before it is read. Every refusal is a `CeleryMessageError` whose text says what to do.
"""

from __future__ import annotations

import builtins
import os
import reprlib
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic_core import PydanticSerializationError, from_json, to_json

from rabbittask.errors import PayloadError, TaskError
from rabbittask.message import parse_time
from rabbittask.results.record import encode_failure, encode_success

JSON = "application/json"
_JSON_TYPES = frozenset({JSON, "application/json; charset=utf-8"})
_ENCODINGS = frozenset({"utf-8", "utf8", ""})
SWITCH_TO_JSON = (
    "switch the Celery producer to JSON: task_serializer='json' and accept_content=['json'] in its "
    "configuration (or apply_async(..., serializer='json')), then send the task again (this message can be "
    "replayed from the dead-letter queue only by a Celery worker that accepts its format)"
)
READY = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


class CeleryMessageError(PayloadError):
    """Raised when a Celery message cannot be run here; the text says why and what to do."""


@dataclass(frozen=True, slots=True)
class CeleryRequest:
    """A decoded Celery protocol 2 task message."""

    task: str
    id: str
    args: list[Any]
    kwargs: dict[str, Any]
    retries: int = 0
    eta: float | None = None  # epoch seconds
    expires: float | None = None
    time_limit_s: float | None = None
    soft_time_limit_s: float | None = None
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    errbacks: list[dict[str, Any]] = field(default_factory=list)
    chain: list[dict[str, Any]] = field(default_factory=list)  # the next step is the last item


def is_celery(headers: dict[str, Any] | None) -> bool:
    """True when AMQP headers are those of a Celery protocol 2 task message."""
    return bool(headers) and "task" in headers and "id" in headers  # type: ignore[operator]


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _time(headers: dict[str, Any], name: str) -> float | None:
    value = headers.get(name)
    if value is None:
        return None
    when = parse_time(value)
    if when is None:
        raise CeleryMessageError(f"header {name!r} is not an ISO 8601 time: {value!r:.80}")
    return when


def _limits(value: Any) -> tuple[float | None, float | None]:
    if value is None:
        return None, None
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise CeleryMessageError(f"header 'timelimit' must be [hard, soft], got {value!r:.80}")
    out: list[float | None] = []
    for v in value:
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or v < 0):
            raise CeleryMessageError(f"header 'timelimit' must hold seconds or null, got {value!r:.80}")
        out.append(None if v is None else float(v))
    return out[0], out[1]


def _signatures(embed: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = embed.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(s, dict) for s in value):
        raise CeleryMessageError(f"body's {key!r} must be a list of signatures, got {value!r:.80}")
    for sig in value:
        kind = sig.get("subtask_type")
        if kind is not None:
            raise CeleryMessageError(
                f"a {kind!r} in the {key!r} of a Celery message is not supported by rabbittask workers (only plain "
                "task signatures in chains and link callbacks are): run this canvas on Celery workers"
            )
        if not isinstance(sig.get("task"), str):
            raise CeleryMessageError(f"a signature in {key!r} has no task name: {sig!r:.80}")
    return value


def decode_request(
    headers: dict[str, Any] | None, body: bytes, content_type: str | None, content_encoding: str | None
) -> CeleryRequest:
    """The Celery request in a message; `CeleryMessageError` saying why it cannot run here."""
    headers = headers or {}
    if content_type not in _JSON_TYPES:
        raise CeleryMessageError(f"content type {content_type!r} is not accepted (JSON only): {SWITCH_TO_JSON}")
    if (content_encoding or "").lower() not in _ENCODINGS or headers.get("compression"):
        raise CeleryMessageError(
            f"encoding {content_encoding!r} / compression {headers.get('compression')!r} is not accepted: send "
            "uncompressed UTF-8 JSON (drop task_compression / compression=)"
        )
    task, task_id = _text(headers.get("task")), _text(headers.get("id"))
    if not task or not task_id:
        raise CeleryMessageError("headers 'task' and 'id' must be non-empty strings (a Celery protocol 2 message)")
    try:
        data = from_json(body)
    except ValueError as e:
        raise CeleryMessageError(f"body is not valid JSON: {e}") from None
    if not isinstance(data, list) or len(data) != 3:
        raise CeleryMessageError("body must be the JSON array [args, kwargs, embed] of Celery's protocol 2")
    args, kwargs, embed = data
    if not isinstance(args, list) or not isinstance(kwargs, dict) or not isinstance(embed, dict | None):
        raise CeleryMessageError("body must be [args (array), kwargs (object), embed (object)]")
    embed = embed or {}
    if embed.get("chord") is not None:
        raise CeleryMessageError(
            "this message is part of a Celery chord, which rabbittask workers do not join: route the chord's "
            "tasks to a queue served by Celery workers, or use rabbittask's own workflows once the producer moved"
        )
    retries = headers.get("retries", 0) or 0
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise CeleryMessageError(f"header 'retries' must be a whole number >= 0, got {retries!r:.40}")
    hard, soft = _limits(headers.get("timelimit"))
    return CeleryRequest(
        task=task,
        id=task_id,
        args=args,
        kwargs=kwargs,
        retries=retries,
        eta=_time(headers, "eta"),
        expires=_time(headers, "expires"),
        time_limit_s=hard,
        soft_time_limit_s=soft,
        root_id=_text(headers.get("root_id")),
        parent_id=_text(headers.get("parent_id")),
        group=_text(headers.get("group")),
        callbacks=_signatures(embed, "callbacks"),
        errbacks=_signatures(embed, "errbacks"),
        chain=_signatures(embed, "chain"),
    )


def _iso(epoch_s: float | None) -> str | None:
    return None if epoch_s is None else datetime.fromtimestamp(epoch_s, UTC).isoformat()


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 200


def encode_request(
    task: str,
    task_id: str,
    args: list[Any] | tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    eta: float | None = None,
    expires: float | None = None,
    retries: int = 0,
    root_id: str | None = None,
    parent_id: str | None = None,
    group: str | None = None,
    callbacks: list[dict[str, Any]] | None = None,
    errbacks: list[dict[str, Any]] | None = None,
    chain: list[dict[str, Any]] | None = None,
) -> tuple[dict[str, Any], bytes]:
    """Headers and JSON body of a Celery protocol 2 message, as Celery's `as_task_v2` writes them."""
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "shadow": None,
        "eta": _iso(eta),
        "expires": _iso(expires),
        "group": group,
        "group_index": None,
        "retries": retries,
        "timelimit": [None, None],
        "root_id": root_id or task_id,
        "parent_id": parent_id,
        "argsrepr": _REPR.repr(tuple(args)),
        "kwargsrepr": _REPR.repr(kwargs),
        "origin": f"{os.getpid()}@{socket.gethostname()}",
        "ignore_result": False,
    }
    embed = {"callbacks": callbacks, "errbacks": errbacks, "chain": chain, "chord": None}
    try:
        body = to_json([list(args), kwargs, embed])
    except PydanticSerializationError as e:
        raise PayloadError(f"task {task!r}: arguments cannot be sent as JSON: {e}") from None
    return headers, body


def exception_meta(exc_type: str, message: str) -> dict[str, Any]:
    """A failure as Celery's JSON result holds it; a builtin type is rebuilt as itself by the Celery caller."""
    builtin = isinstance(getattr(builtins, exc_type, None), type) and issubclass(
        getattr(builtins, exc_type), BaseException
    )
    return {"exc_type": exc_type, "exc_message": [message], "exc_module": "builtins" if builtin else None}


def result_meta(
    task_id: str,
    status: str,
    result: Any,
    traceback: str | None = None,
    *,
    parent_id: str | None = None,
    group: str | None = None,
    now_s: float,
) -> bytes:
    """Celery's JSON result record (the rpc:// reply body and the Redis value); `PayloadError` if not JSON."""
    meta: dict[str, Any] = {
        "status": status,
        "result": result,
        "traceback": traceback or None,
        "children": [],
        "date_done": _iso(now_s) if status in READY else None,
        "task_id": task_id,
    }
    if group:
        meta["group_id"] = group
    if parent_id:
        meta["parent_id"] = parent_id
    try:
        return to_json(meta)
    except PydanticSerializationError as e:
        raise PayloadError(f"result of task {task_id} is not JSON-serialisable ({e})") from None


def read_result(data: bytes) -> tuple[str, Any]:
    """Status and value of a Celery result record; a failure's value is raised as `TaskError`."""
    try:
        meta = from_json(data)
    except ValueError as e:
        raise PayloadError(f"a Celery result record is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or "status" not in meta:
        raise PayloadError(f"a Celery result record must be a JSON object with 'status', got {data[:100]!r}")
    status = str(meta["status"])
    result = meta.get("result")
    if status in ("FAILURE", "REVOKED"):
        exc = result if isinstance(result, dict) else {}
        args = exc.get("exc_message")
        text = ", ".join(map(str, args)) if isinstance(args, list) else str(args or "")
        raise TaskError.remote(str(exc.get("exc_type") or status), text, str(meta.get("traceback") or ""))
    return status, result


def task_key(task_id: str) -> str:
    """The Redis key (and pub/sub channel) of a task's result in Celery's Redis backend."""
    return f"celery-task-meta-{task_id}"


def to_record(data: bytes | str | None) -> bytes | None:
    """rabbittask's result record of a final Celery record; None when there is none (yet)."""
    if data is None:
        return None
    meta = from_json(data)
    if not isinstance(meta, dict) or meta.get("status") not in READY:
        return None
    if meta["status"] == "SUCCESS":
        return encode_success("", meta.get("result"))
    exc: Any = meta.get("result") if isinstance(meta.get("result"), dict) else {}
    args = exc.get("exc_message")
    text = ", ".join(map(str, args)) if isinstance(args, list) else str(args or "")
    exc_type = str(exc.get("exc_type") or meta["status"])
    return encode_failure("", exc_type, text, str(meta.get("traceback") or ""), str(meta["status"]).lower())
