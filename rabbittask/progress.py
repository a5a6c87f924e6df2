"""Progress of a running task: `ctx.progress(done, total, note)` and where it goes.

In a worker, a report is appended to the child's events (`worker/events.py`): at the next flush
(at most a second later; only the latest report of each task in that second) it goes out as a
`task.progress.<task>` event, so the dashboard and the history stream see it, and, for a `.call()`
made with `on_progress=`, as a progress message on the caller's direct reply-to address (header
`rt-progress`), which the caller hands to its callback before the result comes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

H_PROGRESS = "rt-progress"  # on a reply: this is a progress report, not the result
H_PROGRESS_REPLY = "rt-progress-reply"  # on a request: the caller wants progress on its reply address
NOTE_CHARS = 200

Reply = tuple[str, str]  # (reply_to, correlation_id) of a `.call()` that asked for progress


@dataclass(frozen=True, slots=True)
class Progress:
    """A task's latest progress report: `done` of `total`, a short `note`, when (`ts`, epoch seconds)."""

    done: int
    total: int
    note: str = ""
    ts: float = 0.0

    @property
    def fraction(self) -> float:
        """`done / total`, between 0 and 1."""
        return min(1.0, self.done / self.total)

    @classmethod
    def of(cls, data: dict[str, Any]) -> Progress:
        """From an event or a reply body (`done`, `total`, `note`, `ts`)."""
        return cls(int(data["done"]), int(data["total"]), str(data.get("note", "")), float(data.get("ts", 0.0)))


Sink = Callable[[dict[str, Any], "Reply | None"], None]
_sink: Sink | None = None
_local: dict[str, Progress] = {}  # without a worker (eager runs): the latest report per task id, in this process


def set_sink(sink: Sink | None) -> None:
    """Where reports go in this process: a worker child sets its events' `progress` at start."""
    global _sink
    _sink = sink


def drop(update: dict[str, Any], reply: Reply | None) -> None:
    """The sink of a worker without events: reports go nowhere."""


def report(task_id: str, task_name: str, done: int, total: int, note: str, reply: Reply | None) -> None:
    """Check a report and hand it to the sink; `ValueError` saying what is wrong with the numbers."""
    if isinstance(done, bool) or isinstance(total, bool) or not isinstance(done, int) or not isinstance(total, int):
        raise TypeError(f"task {task_name!r}: progress(done, total) takes whole numbers, got {done!r} and {total!r}")
    if total <= 0 or done < 0:
        raise ValueError(
            f"task {task_name!r}: progress({done}, {total}) makes no sense: total must be above 0, done at least 0"
        )
    update = {"id": task_id, "task": task_name, "state": "progress", "ts": time.time(), "done": done, "total": total}
    update["note"] = str(note)[:NOTE_CHARS]
    if _sink is None:
        _local[task_id] = Progress.of(update)
        return
    _sink(update, reply)


def local(task_id: str) -> Progress | None:
    """The latest report of a task run in this process without a worker (eager), if any."""
    return _local.get(task_id)


def reply_body(update: dict[str, Any]) -> bytes:
    """The body of a progress message to a caller: `{"done", "total", "note", "ts"}`."""
    return json.dumps({k: update[k] for k in ("done", "total", "note", "ts")}).encode()
