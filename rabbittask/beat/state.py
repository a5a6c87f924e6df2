"""What beat keeps on the broker: the lock queue, the state queue and its one message, tick ids.

The state is one JSON message, `{"v": 1, "done_until": {entry: time}, "by": ..., "at": ...}`, in a
quorum queue with `x-max-length=1` and `x-overflow=drop-head`: publishing a new state drops the old
one, so the queue always holds exactly the latest, replicated like any quorum queue.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic_core import from_json, to_json

from rabbittask.topology import Arguments, QueueDecl

STATE_VERSION = 1


def lock_queue_name(exchange: str, app_name: str) -> str:
    """The exclusive queue whose holder is the active scheduler of an app."""
    return f"{exchange}.beat.{app_name}.lock"


def state_queue_name(exchange: str, app_name: str) -> str:
    """The queue holding the scheduler state of an app."""
    return f"{exchange}.beat.{app_name}.state"


def state_queue_arguments() -> Arguments:
    """Arguments of the state queue."""
    return {
        # Replicated on a cluster: a takeover on another node still finds the state.
        "x-queue-type": "quorum",
        # One message, the newest: each write replaces the previous one, no consumer needed.
        "x-max-length": 1,
        "x-overflow": "drop-head",
    }


def state_declaration(exchange: str, app_name: str) -> QueueDecl:
    """The state queue as a declaration (part of the app's topology once it has schedules)."""
    return QueueDecl(state_queue_name(exchange, app_name), state_queue_arguments())


def slot_text(slot: float) -> str:
    """A slot as it appears in tick ids and headers: `2025-03-30T01:00:00Z` (UTC, whole seconds)."""
    return datetime.fromtimestamp(slot, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def tick_id(entry_name: str, slot: float) -> str:
    """The message id (task id) of the tick of `entry_name` at `slot`: the same on every replica."""
    return f"{entry_name}@{slot_text(slot)}"


def time_text(t: float) -> str:
    """A time in headers and state: ISO 8601, UTC, milliseconds (as `rt-expires` is written)."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


def parse_time(text: str) -> float:
    """Inverse of `time_text` (and of `slot_text`)."""
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


@dataclass(frozen=True, slots=True)
class State:
    """The last state a scheduler wrote: per entry, the instant up to which every slot was handled."""

    done_until: dict[str, float]
    by: str = ""
    at: float | None = None


def encode_state(done_until: Mapping[str, float], by: str, at: float) -> bytes:
    """The body of a state message."""
    return to_json(
        {
            "v": STATE_VERSION,
            "done_until": {name: time_text(t) for name, t in sorted(done_until.items())},
            "by": by,
            "at": time_text(at),
        }
    )


def decode_state(body: bytes) -> State:
    """Read a state message; raise ValueError if it is not one."""
    data: Any = from_json(body)
    if not isinstance(data, dict) or data.get("v") != STATE_VERSION or not isinstance(data.get("done_until"), dict):
        raise ValueError(f"not a rabbittask beat state (version {STATE_VERSION})")
    done = {str(k): parse_time(v) for k, v in data["done_until"].items()}
    at = data.get("at")
    return State(done, str(data.get("by", "")), parse_time(at) if isinstance(at, str) else None)


def merge(states: list[State]) -> State:
    """One state from several (normally there is one): the latest time per entry."""
    done: dict[str, float] = {}
    for s in states:
        for name, t in s.done_until.items():
            done[name] = max(t, done.get(name, t))
    newest = max(states, key=lambda s: s.at or 0.0) if states else State({})
    return State(done, newest.by, newest.at)
