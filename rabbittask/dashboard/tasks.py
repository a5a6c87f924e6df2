"""The dashboard's index of tasks: each task's life from its events, searchable.

One record per task id (in the order first seen, the most recent `MAX_TASKS` kept): its task name,
latest state, latest progress (`ctx.progress()`), arguments (as the producer wrote them, masked
and cut), worker, runtime, when it was first and last seen, and every event of its life (received,
started, retried with when and why, succeeded, failed, dead-lettered). Fed from the history
stream, so it survives a dashboard restart. A search is a scan, newest first: ~100,000 records
answer in well under a second.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from rabbittask.history.query import Query

MAX_TASKS = 100_000
SEARCH_LIMIT = 100
LIFE_FIELDS = ("state", "ts", "worker", "runtime_s", "reason", "exc_type", "exc_message", "retry_in_s", "traceback")
# A later state wins the record's `state`, but a dead letter does not hide why it failed.
FINAL = {"succeeded": 3, "failed": 3, "dead-lettered": 2, "retried": 1, "started": 0, "received": 0, "duplicate": 3}


DONE = ("succeeded", "failed", "dead-lettered", "duplicate")


class TaskIndex:
    """Task records by id, fed with flattened events (`rabbittask.history.query.flatten`)."""

    def __init__(self, max_tasks: int = MAX_TASKS) -> None:
        self.max_tasks = max_tasks
        self.records: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.events = 0
        self.running: OrderedDict[str, dict[str, Any]] = OrderedDict()  # tasks that reported progress, not done

    def add(self, event: dict[str, Any]) -> None:
        """Take one event into its task's record."""
        task_id = str(event.get("id", "?"))
        record = self.records.get(task_id)
        ts = event.get("ts") or 0.0
        state = str(event.get("state", "?"))
        if record is None:
            record = self.records[task_id] = {
                "id": task_id,
                "task": event.get("task"),
                "state": state,
                "args": None,
                "workflow": None,
                "worker": None,
                "runtime_s": None,
                "first_ts": ts,
                "last_ts": ts,
                "events": [],
            }
            if len(self.records) > self.max_tasks:
                gone, _ = self.records.popitem(last=False)
                self.running.pop(gone, None)
        self.events += 1
        if state == "progress":
            record["progress"] = {k: event.get(k) for k in ("done", "total", "note", "ts")}
            record["worker"] = event.get("worker") or record["worker"]
            record["last_ts"] = max(record["last_ts"], ts)
            if record["state"] not in DONE:
                self.running[task_id] = record
            return
        life = {k: event[k] for k in LIFE_FIELDS if k in event}
        record["events"].append(life)
        if event.get("args") is not None:
            record["args"] = event["args"]
        if event.get("workflow") is not None:
            record["workflow"] = event["workflow"]
        record["worker"] = event.get("worker") or record["worker"]
        if "runtime_s" in event and state != "retried":
            record["runtime_s"] = event["runtime_s"]
        record["first_ts"], record["last_ts"] = min(record["first_ts"], ts), max(record["last_ts"], ts)
        if FINAL.get(state, 0) >= FINAL.get(record["state"], 0):
            record["state"] = state
        if state in DONE:
            self.running.pop(task_id, None)

    def search(self, query: Query, limit: int = SEARCH_LIMIT) -> tuple[list[dict[str, Any]], int]:
        """Records that match `query` (without their events), newest first; and how many matched in all.

        A record matches when its task, latest state, worker, arguments and id match, and its life
        overlaps [since, until].
        """
        found: list[dict[str, Any]] = []
        matched = 0
        candidates: Iterable[dict[str, Any]]
        if query.task_id is not None:
            record = self.records.get(query.task_id)
            candidates = [record] if record is not None else []
        else:
            candidates = reversed(self.records.values())
        since, until = query.since, query.until
        for record in candidates:
            if query.task is not None and record["task"] != query.task:
                continue
            if query.state is not None and record["state"] != query.state:
                continue
            if (since is not None and record["last_ts"] < since) or (until is not None and record["first_ts"] > until):
                continue
            if query.worker is not None and query.worker not in (record["worker"] or ""):
                continue
            if query.args is not None and query.args not in (record["args"] or ""):
                continue
            matched += 1
            if len(found) < limit:
                found.append({k: v for k, v in record.items() if k != "events"})
        return found, matched

    def in_progress(self, limit: int = SEARCH_LIMIT) -> list[dict[str, Any]]:
        """Tasks that reported progress and have not finished, most recently reported first."""
        rows = sorted(self.running.values(), key=lambda r: r["progress"]["ts"] or 0.0, reverse=True)
        return [{k: v for k, v in r.items() if k != "events"} for r in rows[:limit]]

    def workflow(self, workflow_id: str) -> dict[str, Any]:
        """The tasks of a workflow the index holds: how many, by latest state, and up to `SEARCH_LIMIT` of them."""
        members = [r for r in self.records.values() if r["workflow"] == workflow_id]
        states: dict[str, int] = {}
        for r in members:
            states[r["state"]] = states.get(r["state"], 0) + 1
        shown = [{k: r[k] for k in ("id", "task", "state", "first_ts")} for r in members[:SEARCH_LIMIT]]
        return {"id": workflow_id, "seen": len(members), "states": states, "tasks": shown}

    def get(self, task_id: str) -> dict[str, Any] | None:
        """A task's record with its whole life, or None when the index does not hold it."""
        return self.records.get(task_id)
