"""Which task events a search asks for: by id, task, state, worker, time and a piece of the arguments.

The same `Query` filters `rabbittask events` and the dashboard's search. An event here is one
event of a message of the events exchange, flattened with its message's `host`, `pid` and `ts`
(`flatten`): `{"ts", "id", "task", "state", "host", "pid", "worker", ...}`.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

STATES = ("received", "started", "succeeded", "failed", "retried", "dead-lettered", "duplicate")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True)
class Query:
    """Filters; each one left None matches everything. Strings match exactly but `worker` and `args`."""

    task_id: str | None = None
    task: str | None = None
    state: str | None = None
    worker: str | None = None  # a piece of "host:pid"
    args: str | None = None  # a piece of the arguments' repr (masked and cut as the producer sent it)
    since: float | None = None  # epoch seconds
    until: float | None = None

    def __post_init__(self) -> None:
        if self.state is not None and self.state not in STATES:
            raise ValueError(f"unknown state {self.state!r}: use one of {', '.join(STATES)}")

    def matches(self, event: dict[str, Any]) -> bool:
        """Whether a flattened event passes every filter."""
        if self.task_id is not None and event.get("id") != self.task_id:
            return False
        if self.task is not None and event.get("task") != self.task:
            return False
        if self.state is not None and event.get("state") != self.state:
            return False
        ts = event.get("ts") or 0.0
        if (self.since is not None and ts < self.since) or (self.until is not None and ts > self.until):
            return False
        if self.worker is not None and self.worker not in event.get("worker", ""):
            return False
        return self.args is None or self.args in (event.get("args") or "")


def flatten(message: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The events of one message of the events exchange, each with its worker and time."""
    events = message.get("events")
    if not isinstance(events, list):
        return
    host, pid, ts = message.get("host", "?"), message.get("pid", "?"), message.get("ts")
    for event in events:
        if isinstance(event, dict):
            yield {"ts": ts, **event, "host": host, "pid": pid, "worker": f"{host}:{pid}"}


def parse_time(text: str, now: float) -> float:
    """`1h`, `30m`, `2d`, `90s`, `1w` ago, or an ISO 8601 time (UTC unless it says), as epoch seconds."""
    found = _DURATION.match(text)
    if found:
        return now - float(found.group(1)) * _UNIT_S[found.group(2)]
    try:
        when = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use a duration ago (90s, 30m, 1h, 2d, 1w) or an ISO time (2026-12-07T15:00)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()
