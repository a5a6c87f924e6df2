"""The JSON record of a task's result: the body of a direct reply and the value a backend stores.

    {"v": 1, "ok": true,  "status": "SUCCESS", "task": "...", "result": ...}
    {"v": 1, "ok": false, "status": "FAILURE", "task": "...", "exc_type": "...", "message": "...",
     "traceback": "...", "reason": "..."}

One shape for both, so the worker encodes a result once and a caller decodes either the same way
(docs/protocol.md, "Replies and results").
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic_core import PydanticSerializationError, from_json, to_json

from rabbittask.errors import PayloadError, ResultNotSerialisable, TaskError

RECORD_VERSION = 1


class Status(StrEnum):
    """The state of a task's result, as `TaskHandle.status` says it; a `str`, so `status == "SUCCESS"` holds."""

    PENDING = "PENDING"  # no result stored yet, or it expired or was forgotten
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"


PENDING = Status.PENDING
SUCCESS = Status.SUCCESS
FAILURE = Status.FAILURE


def encode_success(task_name: str, value: Any) -> bytes:
    """The record of a successful task; raise `ResultNotSerialisable` naming the value's type."""
    try:
        return to_json({"v": RECORD_VERSION, "ok": True, "status": SUCCESS, "task": task_name, "result": value})
    except PydanticSerializationError as e:
        raise ResultNotSerialisable(f"result of type {type(value).__name__} is not JSON-serialisable ({e})") from None


def encode_failure(task_name: str, exc_type: str, message: str, traceback: str, reason: str) -> bytes:
    """The record of a failed task: the remote exception's type, message and traceback text."""
    return to_json(
        {
            "v": RECORD_VERSION,
            "ok": False,
            "status": FAILURE,
            "task": task_name,
            "exc_type": exc_type,
            "message": message,
            "traceback": traceback,
            "reason": reason,
        }
    )


def _load(data: bytes) -> dict[str, Any]:
    try:
        record = from_json(data)
    except ValueError as e:
        raise PayloadError(f"a result record is not valid JSON: {e}") from None
    if not isinstance(record, dict) or "ok" not in record:
        raise PayloadError(f"a result record must be a JSON object with 'ok', got {data[:100]!r}")
    return record


def status_of(data: bytes) -> Status:
    """SUCCESS or FAILURE, from a stored record."""
    return SUCCESS if _load(data)["ok"] else FAILURE


def decode_result(data: bytes) -> Any:
    """The return value in a record, or raise the remote failure as `TaskError` (and as its builtin type)."""
    record = _load(data)
    if record["ok"]:
        return record.get("result")
    raise TaskError.remote(
        str(record.get("exc_type") or "Error"),
        str(record.get("message") or ""),
        str(record.get("traceback") or ""),
        str(record.get("reason") or ""),
    )
