"""What one worker process knows for the control plane: the revocations in the window, and the runs under way.

`REVOKED` is filled from the `<exchange>.revoked` stream (follow.py) and read by the worker's revoke
stage (worker/revoke.py) and by `ctx.check_revoked()`. It holds the ids revoked within
`revoke_retention_s` and forgets older ones (`prune`), so its size is bounded by the window, never
by the worker's age. `RUNS` is the set of task runs under way in this process (what `inspect active`
lists, and what `terminate=True` stops); the executor registers each run around the task's call.
Both are touched from task threads and the event loop: single dict operations, atomic under the GIL.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiormq.abc import DeliveredMessage

from rabbittask.errors import TaskRevoked

ARGS_CHARS = 200
_now = time.time
_thread = threading.get_ident  # `inspect active` shows this much of a run's arguments


class Revocations:
    """Task ids revoked within the retention window: id -> (revoked at, terminate)."""

    def __init__(self) -> None:
        self.window_s = 86400.0
        self._ids: dict[str, tuple[float, bool]] = {}

    def add(self, ids: list[str], revoked_at: float, terminate: bool) -> list[str]:
        """Record a revocation (idempotent: the stream and the broadcast both bring it); the ids new here."""
        if revoked_at < time.time() - self.window_s:
            return []
        new = []
        for task_id in ids:
            old = self._ids.get(task_id)
            if old is None or (terminate and not old[1]):
                new.append(task_id)
            self._ids[task_id] = (max(revoked_at, old[0]) if old else revoked_at, terminate or bool(old and old[1]))
        return new

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> dict[str, tuple[float, bool]]:
        """The revoked ids (read-only use: a truth test and `in` are what the hot path needs)."""
        return self._ids

    def terminated(self, task_id: str) -> bool:
        """True if `task_id` was revoked with `terminate=True`."""
        entry = self._ids.get(task_id)
        return entry is not None and entry[1]

    def prune(self, now: float | None = None) -> int:
        """Forget revocations older than the window; how many were forgotten."""
        oldest = (time.time() if now is None else now) - self.window_s
        old = [k for k, (at, _) in self._ids.items() if at < oldest]
        for k in old:
            self._ids.pop(k, None)
        return len(old)

    def clear(self) -> None:
        self._ids.clear()


@dataclass(slots=True)
class Run:
    """A task run under way in this process."""

    message: DeliveredMessage
    task_name: str
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    started_at: float  # epoch seconds
    thread: int = 0  # the thread a sync task runs in; 0 for an async task
    task: asyncio.Task[Any] | None = None  # the asyncio task an async task runs in
    terminating: bool = False  # terminate=True reached it: cancelled (async) or checked (sync)
    abandoned: bool = False  # replaced after the grace period: its outcome, should it come, is dropped

    def describe(self, now: float) -> dict[str, Any]:
        """As `inspect active` reports it."""
        props = self.message.header.properties
        shown = ", ".join([*(repr(a) for a in self.args), *(f"{k}={v!r}" for k, v in self.kwargs.items())])
        return {
            "id": props.message_id or "",
            "name": self.task_name,
            "args": shown if len(shown) <= ARGS_CHARS else shown[: ARGS_CHARS - 3] + "...",
            "started_at": self.started_at,
            "runtime_s": round(now - self.started_at, 3),
        }


@dataclass(slots=True)
class Runs:
    """The runs under way in this process, by message id; counts of those that ended."""

    active: dict[str, Run] = field(default_factory=dict)
    done: int = 0
    failed: int = 0

    def start(
        self,
        message: DeliveredMessage,
        task_name: str,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        task: asyncio.Task[Any] | None = None,
    ) -> Run:
        """Register a run that starts now: in `task` (async), else in this thread. Cheap: nothing is formatted."""
        run = Run(message, task_name, args, kwargs, _now(), 0 if task else _thread(), task)
        self.active[message.header.properties.message_id or ""] = run
        return run

    def end(self, run: Run, failed: bool) -> bool:
        """Unregister `run`; True if it was abandoned (its outcome must be dropped: it was settled already)."""
        key = run.message.header.properties.message_id or ""
        if self.active.get(key) is run:
            del self.active[key]
        if failed:
            self.failed += 1
        else:
            self.done += 1
        return run.abandoned


REVOKED = Revocations()
RUNS = Runs()


def check_revoked(task_id: str, task_name: str) -> None:
    """Raise `TaskRevoked` if `task_id` was revoked with `terminate=True` (a sync task calls this between steps)."""
    if REVOKED.terminated(task_id):
        run = RUNS.active.get(task_id)
        if run is not None:
            run.terminating = True
        raise TaskRevoked(f"task {task_name!r} (id {task_id}) was revoked with terminate=True")
