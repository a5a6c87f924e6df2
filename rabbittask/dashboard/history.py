"""What the dashboard heard: live workers, task counts per minute, recent failures.

Per-minute counts of the last hour, the last `FAILURES` dead-lettered tasks, and the latest
heartbeat of each worker child, in memory. With the history stream (history.py of the package
`rabbittask.history`) the dashboard reads the past from the broker at start, so `started_at` is
the time of the oldest event read, and task events count at their time (`now` passed by the
reader); live events count when they arrive. Apps that share an exchange share its events: only
events of `tasks` (the app's task names) count. A child is live while its heartbeats keep coming
(within `LIVE_BEATS` intervals) and until it says it goes offline.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Collection
from typing import Any

from rabbittask.dashboard.tasks import TaskIndex
from rabbittask.dashboard.taskstats import TaskStats
from rabbittask.dashboard.waiting import Waiting
from rabbittask.history.query import flatten
from rabbittask.ops.heartbeat import HEARTBEAT, OFFLINE, Heartbeat

MINUTES = 60
FAILURES = 50
LIVE_BEATS = 3.0  # a child missing this many heartbeat intervals is taken for gone
FAILED = "failed"  # the task ran and raised; it is dead-lettered
DEAD_LETTERED = "dead-lettered"  # in the DLQ: a failed task, or one that never ran (bad message, expired...)

PROGRESS = "progress"  # ctx.progress() of a running task
BEAT_TICK = "beat.tick."  # a tick `rabbittask beat` sent (beat/scheduler.py)

BeatKey = tuple[str, int]


class History:
    """Heartbeats, per-minute task counts and recent failures, fed with event messages."""

    def __init__(self, tasks: Collection[str] | None = None, now: float | None = None) -> None:
        self.tasks = frozenset(tasks) if tasks is not None else None
        self.started_at = time.time() if now is None else now
        self.minutes: dict[int, Counter[str]] = {}  # minute (epoch // 60) -> counts, the last MINUTES kept
        self.totals: Counter[str] = Counter()
        self.failures: deque[dict[str, Any]] = deque(maxlen=FAILURES)
        self.beats: dict[BeatKey, tuple[float, Heartbeat]] = {}
        self.index = TaskIndex()
        self.stats = TaskStats()
        self.waiting = Waiting()

    def feed(self, routing_key: str, body: dict[str, Any], now: float | None = None) -> None:
        """Take one message of the events exchange (`task.<state>.<task>` or `worker.*`)."""
        now = time.time() if now is None else now
        if routing_key.startswith("task."):
            self.started_at = min(self.started_at, now)  # history read from the stream reaches back
            self._tasks(body, now)
            return
        if routing_key.startswith(BEAT_TICK):
            self.waiting.beat_tick(body)
            return
        if routing_key not in (HEARTBEAT, OFFLINE):
            return
        try:
            beat = Heartbeat.decode(body)
        except ValueError:
            return
        if routing_key == OFFLINE:
            self.beats.pop(beat.key, None)
        else:
            self.beats[beat.key] = (now, beat)

    def _tasks(self, body: dict[str, Any], now: float) -> None:
        events = body.get("events")
        if not isinstance(events, list):
            return
        counts = self._minute(now)
        minute = int(now // 60) if counts is not None else None
        for event in flatten({**body, "ts": now}):
            if self.tasks is not None and event.get("task") not in self.tasks:
                continue
            self.index.add(event)
            self.waiting.add(event)
            state = str(event.get("state", "?"))
            if state == PROGRESS:
                continue  # on the task's record only: a report is no outcome
            self.stats.add(event, minute)
            if counts is not None:
                counts[state] += 1
            self.totals[state] += 1
            if state in (FAILED, DEAD_LETTERED):
                self._failure(event)

    def _failure(self, entry: dict[str, Any]) -> None:
        for i, seen in enumerate(self.failures):
            if seen.get("id") == entry.get("id"):  # a failed task is also reported dead-lettered: keep one
                if entry["state"] == FAILED:
                    self.failures[i] = entry  # the one with the traceback
                return
        if len(self.failures) == FAILURES and entry["ts"] < self.failures[-1]["ts"]:
            return  # older than every one listed (history read out of order)
        self.failures.appendleft(entry)

    def _minute(self, now: float) -> Counter[str] | None:
        """The counts of the minute of `now`; None when it is older than the plot shows."""
        minute = int(now // 60)
        counts = self.minutes.get(minute)
        if counts is None:
            counts = self.minutes[minute] = Counter()
            newest = max(self.minutes)
            for old in [m for m in self.minutes if m <= newest - MINUTES]:
                del self.minutes[old]
            self.stats.prune(newest - MINUTES + 1)
            if minute <= newest - MINUTES:  # already pruned just above
                return None  # older than the plot: counted in the totals and the table only
        return counts

    def live_beats(self, now: float | None = None) -> list[Heartbeat]:
        """The latest heartbeat of every child still live."""
        now = time.time() if now is None else now
        for key, (seen, beat) in list(self.beats.items()):
            if now - seen > LIVE_BEATS * beat.interval_s:
                del self.beats[key]
        return [beat for _, beat in self.beats.values()]

    def minutes_shown(self, now: float | None = None) -> list[int]:
        """The minutes (epoch // 60) the plot shows: the last hour, from the oldest event read."""
        now = time.time() if now is None else now
        last = int(now // 60)
        return list(range(max(last - MINUTES + 1, int(self.started_at // 60)), last + 1))

    def rates(self, now: float | None = None) -> dict[str, Any]:
        """Counts per minute for the last hour: `minutes` (epoch seconds) and one list per state."""
        span = self.minutes_shown(now)
        by_minute = self.minutes
        states = sorted({s for c in self.minutes.values() for s in c} | {"succeeded", "failed"})
        return {
            "minutes": [m * 60 for m in span],
            "series": {s: [by_minute.get(m, Counter())[s] for m in span] for s in states},
        }
