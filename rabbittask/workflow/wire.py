"""The workflow fields of a task message and the records of a chord's join (docs/protocol.md, "Workflows").

A chain travels in its messages: the body of a step carries the steps after it,

    {"v": 1, "args": [...], "kwargs": {...}, "chain": [<step>, ...], "chord": {"id": "...", "index": 3}}

and a step is `{"task", "id", "queue", "args", "kwargs", "immutable", "options"}`. A `chord` marker
belongs to the end of the chain: the step that finishes it (or fails for good) reports to the join
queue. Every message of a workflow has the header `rt-workflow` (the workflow's id), so a worker reads
the body again only for those.

Join records are JSON bodies on the join queue (`<exchange>.join`): `start` (sent by the producer: size,
callback, on_error, allow_failures), `member` (one member's outcome), `partial` (a joiner's compaction:
the start and the members so far) and `done` (a completed chord: late copies are dropped).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic_core import PydanticSerializationError, from_json, to_json

from rabbittask.errors import PayloadError
from rabbittask.message import PROTOCOL_VERSION, Outgoing
from rabbittask.sending import SendOptions, build_message

if TYPE_CHECKING:
    from rabbittask.app import App
    from rabbittask.task import Signature

H_WORKFLOW = "rt-workflow"  # the workflow's id, on every message of a workflow
H_CHORD_CALLBACK = "rt-chord-callback"  # the chord's id, on its callback (or on_error): claimed once when run
RECORD_KINDS = frozenset({"start", "member", "partial", "done"})
RECORD_TASK = "rabbittask.join"  # the `type` of a join record (not a task: never consumed by a worker)


def join_queue_name(exchange: str, configured: str | None = None) -> str:
    """The queue where chord members report (`join_queue` setting, default `<exchange>.join`)."""
    return configured or f"{exchange}.join"


def join_queue_arguments() -> dict[str, Any]:
    # Quorum: the records a joiner holds unacked survive a broker restart and a node loss.
    # Single active consumer: one joiner at a time holds a chord's records; the next takes over when it dies.
    return {"x-queue-type": "quorum", "x-single-active-consumer": True}


def step(sig: Signature[Any], step_id: str) -> dict[str, Any]:
    """The JSON of one step: what a worker needs to send it later (`task.s(...)` with its id)."""
    options = dict(sig.options)
    expires = options.get("expires")
    if isinstance(expires, datetime):
        options["expires"] = expires.isoformat()
    return {
        "task": sig.task.name,
        "id": step_id,
        "queue": options.pop("queue", None) or sig.task.queue,
        "args": list(sig.args),
        "kwargs": dict(sig.kwargs),
        "immutable": sig.immutable,
        "options": options,
    }


@dataclass(slots=True)
class Flow:
    """What a workflow message carries besides its arguments: the steps after it, its chord marker."""

    chain: list[dict[str, Any]] = field(default_factory=list)
    chord: dict[str, Any] | None = None


def encode(args: list[Any] | tuple[Any, ...], kwargs: Mapping[str, Any], flow: Flow, limit: int, what: str) -> bytes:
    """The body of a workflow message; `PayloadError` if it is not JSON or larger than `limit` bytes."""
    data: dict[str, Any] = {"v": PROTOCOL_VERSION, "args": list(args), "kwargs": dict(kwargs)}
    if flow.chain:
        data["chain"] = flow.chain
    if flow.chord is not None:
        data["chord"] = flow.chord
    try:
        body = to_json(data)
    except PydanticSerializationError as e:
        raise PayloadError(f"{what}: cannot be sent as JSON: {e}") from None
    if len(body) > limit:
        raise PayloadError(
            f"{what}: the message is {len(body)} bytes, above max_payload_bytes ({limit}); pass references "
            "(a URL, a key) instead of the data"
        )
    return body


def flow_of(body: bytes) -> Flow:
    """The workflow fields of a message body (empty when it has none or cannot be read)."""
    try:
        data = from_json(body)
    except ValueError:
        return Flow()
    if not isinstance(data, dict):
        return Flow()
    chain = data.get("chain")
    chord = data.get("chord")
    return Flow(chain if isinstance(chain, list) else [], chord if isinstance(chord, dict) and "id" in chord else None)


def step_message(
    app: App,
    spec: dict[str, Any],
    previous: list[Any],
    flow: Flow,
    workflow_id: str,
    *,
    reply_to: str | None = None,
    correlation_id: str | None = None,
) -> Outgoing:
    """The message of step `spec`, with `previous` (the prior result, or none) in front of its arguments."""
    args = ([] if spec.get("immutable") else previous) + list(spec.get("args", []))
    name = str(spec["task"])
    body = encode(args, spec.get("kwargs", {}), flow, app.settings.max_payload_bytes, f"step {name!r}")
    options: SendOptions = {"message_id": str(spec["id"])}
    raw = spec.get("options") or {}
    for key in ("countdown", "priority"):
        if raw.get(key) is not None:
            options[key] = raw[key]
    if raw.get("expires") is not None:
        expires = raw["expires"]
        options["expires"] = datetime.fromisoformat(expires) if isinstance(expires, str) else float(expires)
    msg = build_message(app, name, str(spec["queue"]), body, options)
    msg.headers = {**(msg.headers or {}), H_WORKFLOW: workflow_id}
    msg.reply_to, msg.correlation_id = reply_to, correlation_id
    return msg


def record_message(join_queue: str, record: dict[str, Any], record_id: str, limit: int | None = None) -> Outgoing:
    """A join record, published to the join queue through the default exchange (confirmed, mandatory)."""
    body = to_json({"v": PROTOCOL_VERSION, **record})
    if limit is not None and len(body) > limit:
        raise PayloadError(f"chord {record.get('chord')!r}: its join record is {len(body)} bytes, above {limit}")
    return Outgoing(routing_key=join_queue, body=body, message_id=record_id, task_name=RECORD_TASK, exchange="")


def failure_entry(member_id: str, index: int, reason: str, exc_type: str = "", message: str = "") -> dict[str, Any]:
    """How a member that failed for good appears to `on_error` (and, with `allow_failures`, to the callback)."""
    return {"failed": True, "id": member_id, "index": index, "reason": reason, "exc_type": exc_type, "message": message}
