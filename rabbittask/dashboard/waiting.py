"""What waits and what ticks, from task events: retries waiting in the delay ladder, schedules' last ticks, run rates.

A `retried` event says when the task comes back (`retry_in_s` after the event): the task waits in
the delay ladder until then, and is listed until a later event of it (received, started, a
final state) says it left. Countdowns and ETAs of `apply_async` emit no event when sent, so they
are not listed; the ladder's total depth (`delayed` in the state) counts them. A periodic tick is
a task whose id is `<schedule>@<slot>` (beat/state.py): beat's `beat.tick.<schedule>` event, and the
tick's task events, give each schedule's latest slot. Run rates count starts per task over the last `RATE_WINDOW_S`: the
`started` events, or the finished runs where workers do not send `started` (`events_started`).
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rabbittask.beat.entry import ScheduleEntry

RATE_WINDOW_S = 60.0
MAX_DELAYED = 10_000  # retries listed at most (the oldest go first)
RUNS = ("succeeded", "failed", "retried")  # a finished run: one start each


class Waiting:
    """Retries waiting with their due time, the latest tick of each schedule, and recent starts per task."""

    def __init__(self) -> None:
        self.delayed: dict[str, dict[str, Any]] = {}  # task id -> {"id", "task", "due", "retried_at", ...}
        self.ticks: dict[str, tuple[float, str]] = {}  # schedule name -> (latest slot seen, its tick id)
        self.started: dict[str, Counter[int]] = {}  # task -> starts per second (epoch) within the window
        self.finished: dict[str, Counter[int]] = {}  # task -> finished runs per second, without `started` events
        self.newest = 0.0  # time of the newest event: the window ends there while the history is read

    def add(self, event: dict[str, Any]) -> None:
        """Take one flattened task event."""
        task_id, task = str(event.get("id", "")), str(event.get("task", "?"))
        state, ts = event.get("state"), float(event.get("ts") or 0.0)
        self.newest = max(self.newest, ts)
        if state == "progress":
            return
        if state == "retried" and isinstance(event.get("retry_in_s"), int | float):
            self.delayed.pop(task_id, None)  # re-inserted: newest last
            self.delayed[task_id] = {
                "id": task_id,
                "task": task,
                "due": ts + float(event["retry_in_s"]),
                "retried_at": ts,
                "reason": event.get("reason"),
                "exc_type": event.get("exc_type"),
                "exc_message": event.get("exc_message"),
                "args": event.get("args"),
                "worker": event.get("worker"),
            }
            if len(self.delayed) > MAX_DELAYED:
                self.delayed.pop(next(iter(self.delayed)))
        else:
            entry = self.delayed.get(task_id)
            if entry is not None and ts >= entry["retried_at"]:
                del self.delayed[task_id]
        if "@" in task_id:
            self._tick(task_id)
        if state == "started":
            self._count(self.started, task, ts)
        elif state in RUNS:
            self._count(self.finished, task, ts)

    def beat_tick(self, body: dict[str, Any]) -> None:
        """Take a `beat.tick.<schedule>` event: `{"schedule", "task", "id", "slot", "ts", "by"}`."""
        name, slot, task_id = body.get("schedule"), body.get("slot"), body.get("id")
        if isinstance(name, str) and isinstance(slot, int | float) and slot > self.ticks.get(name, (0.0, ""))[0]:
            self.ticks[name] = (float(slot), str(task_id))

    def _tick(self, task_id: str) -> None:
        name, _, slot_text = task_id.rpartition("@")
        try:
            slot = datetime.strptime(slot_text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
        except ValueError:
            return
        if slot > self.ticks.get(name, (0.0, ""))[0]:
            self.ticks[name] = (slot, task_id)

    def _count(self, counts: dict[str, Counter[int]], task: str, ts: float) -> None:
        seconds = counts.setdefault(task, Counter())
        seconds[int(ts)] += 1
        if len(seconds) > 2 * RATE_WINDOW_S:  # forget the seconds before the window
            oldest = int(self.newest - RATE_WINDOW_S)
            for second in [s for s in seconds if s < oldest]:
                del seconds[second]

    def delayed_rows(self, now: float) -> list[dict[str, Any]]:
        """The retries waiting, soonest due first; `due_in_s` is negative once due (a worker has yet to take it)."""
        rows = sorted(self.delayed.values(), key=lambda r: r["due"])
        return [{**r, "due_in_s": round(r["due"] - now, 1)} for r in rows]

    def run_rate(self, task: str, now: float) -> tuple[float, str]:
        """Runs of `task` started per second over the last minute, and what was counted (`started` or `finished`)."""
        since = now - RATE_WINDOW_S
        started = self.started.get(task)
        counts, counted = (started, "started") if started else (self.finished.get(task) or Counter(), "finished")
        return round(sum(n for s, n in counts.items() if s >= since) / RATE_WINDOW_S, 3), counted

    def schedule_rows(self, schedules: dict[str, ScheduleEntry], now: float) -> list[dict[str, Any]]:
        """Each schedule entry: what it sends, when, its latest tick seen in the history and its next slot."""
        rows = []
        for name in sorted(schedules):
            entry = schedules[name]
            last = self.ticks.get(name)
            when = f"cron {entry.cron} ({entry.tz})" if entry.cron is not None else f"every {entry.every_s:g} s"
            rows.append(
                {
                    "name": name,
                    "task": entry.task_name,
                    "queue": entry.queue,
                    "when": when,
                    "last_tick": last[0] if last else None,
                    "last_tick_id": last[1] if last else None,
                    "next_tick": entry.next_after(now),
                }
            )
        return rows
