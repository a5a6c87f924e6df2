"""The heartbeat of a worker child: the one schema its writer (the worker) and its readers share.

Each child sends one on `worker.heartbeat` of the `<exchange>.events` topic exchange every
`events_heartbeat_s`, and a last one on `worker.offline` when it stops (docs/events.md, "Bodies").
`rabbittask status` and the dashboard read them to show live workers: children are grouped by
`(host, ppid)`, their supervisor. Readers are lenient, as a reader of a newer worker must be: only
`host` and `pid` are required, unknown fields are ignored, and a missing count reads as 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

HEARTBEAT = "worker.heartbeat"
OFFLINE = "worker.offline"
ROUTING_KEYS = "worker.*"
DEFAULT_INTERVAL_S = 2.0  # for a heartbeat that does not say its interval


class Heartbeat(BaseModel):
    """What a worker child says of itself: who it is, what it consumes, and its counts so far."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    host: str
    pid: int
    ppid: int = 0  # the supervisor's pid; a heartbeat without it is taken for its own supervisor's
    ts: float = 0.0  # when it was sent (epoch seconds, the worker's clock)
    app: str = ""
    queues: tuple[str, ...] = ()
    interval_s: float = DEFAULT_INTERVAL_S  # seconds until the next one
    uptime_s: float = 0.0
    done: int = 0  # messages settled
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    duplicates: int = 0  # copies acked unrun: the same id and attempt ran within the task's dedupe_s
    dropped: int = 0  # events lost while the broker could not take them
    reconnects: int = 0
    in_flight: int = 0  # messages taken and not yet settled
    consuming: bool = False
    # Chords the child's active joiner counts: [chord id, members reported, members in all] (at most 50).
    chords: tuple[tuple[str, int, int], ...] = ()
    active_partitions: tuple[str, ...] = ()  # partition queues it is the single active consumer of (as it knows)

    @model_validator(mode="before")
    @classmethod
    def _supervisor(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and not data.get("ppid") and "pid" in data:
            return {**data, "ppid": data["pid"]}
        return data

    @property
    def key(self) -> tuple[str, int]:
        """The child: (host, pid)."""
        return self.host, self.pid

    @property
    def supervisor(self) -> tuple[str, int]:
        """The worker the child belongs to: (host, supervisor pid)."""
        return self.host, self.ppid

    def body(self) -> dict[str, Any]:
        """As a JSON object (what goes on the wire)."""
        return self.model_dump(mode="json")

    def encode(self) -> bytes:
        """As the JSON body of a message."""
        return self.model_dump_json().encode()

    @classmethod
    def decode(cls, data: bytes | str | Mapping[str, Any]) -> Heartbeat:
        """Read a heartbeat from a message body or a decoded JSON object; raise `ValueError` if it is none."""
        if isinstance(data, Mapping):
            return cls.model_validate(data)
        return cls.model_validate_json(data)
