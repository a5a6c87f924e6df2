"""The dashboard's task index: each task's life from its events, and searches over it."""

from __future__ import annotations

from typing import Any

from rabbittask.dashboard.history import History
from rabbittask.dashboard.tasks import TaskIndex
from rabbittask.history.query import Query

T0 = 1_800_000_000.0


def message(ts: float, *events: dict[str, Any], host: str = "web-1", pid: int = 7) -> dict[str, Any]:
    return {"host": host, "pid": pid, "ts": ts, "events": list(events)}


def test_a_task_page_holds_its_whole_life_received_retried_with_when_and_why_then_succeeded() -> None:
    history = History({"shop.send_email"}, now=T0)
    sent = {"id": "m1", "task": "shop.send_email", "args": "('ann@example.com', password='***')"}
    history.feed("task.received.shop.send_email", message(T0, {**sent, "state": "received", "ts": T0 - 0.5}), now=T0)
    retried = {**sent, "state": "retried", "runtime_s": 0.2, "reason": "retry", "exc_type": "SMTPError"}
    history.feed("task.retried.shop.send_email", message(T0 + 1, {**retried, "retry_in_s": 2.0}), now=T0 + 1)
    done = {**sent, "state": "succeeded", "runtime_s": 0.05}
    history.feed("task.succeeded.shop.send_email", message(T0 + 4, done, pid=8), now=T0 + 4)
    record = history.index.get("m1")
    assert record is not None
    assert (record["state"], record["runtime_s"], record["worker"]) == ("succeeded", 0.05, "web-1:8")
    assert (record["first_ts"], record["last_ts"], record["args"]) == (T0 - 0.5, T0 + 4, sent["args"])
    life = [(e["state"], e["ts"], e.get("retry_in_s"), e.get("exc_type")) for e in record["events"]]
    assert life == [
        ("received", T0 - 0.5, None, None),
        ("retried", T0 + 1, 2.0, "SMTPError"),
        ("succeeded", T0 + 4, None, None),
    ]


def test_a_failed_task_stays_failed_when_its_dead_letter_event_comes_after() -> None:
    index = TaskIndex()
    index.add({"id": "a", "task": "t", "state": "failed", "ts": T0, "traceback": "Traceback ..."})
    index.add({"id": "a", "task": "t", "state": "dead-lettered", "ts": T0})
    assert index.get("a")["state"] == "failed"  # type: ignore[index]


def test_search_by_task_state_worker_time_and_argument_piece_newest_first() -> None:
    index = TaskIndex()
    for i in range(10):
        state = "failed" if i % 3 == 0 else "succeeded"
        index.add({"id": f"t{i}", "task": "shop.send_email", "state": state, "ts": T0 + i, "worker": f"h:{i % 2}",
                   "args": f"('user{i}@example.com',)"})  # fmt: skip
    index.add({"id": "c", "task": "shop.charge", "state": "failed", "ts": T0 + 20, "worker": "h:0"})

    def ids(query: Query, limit: int = 100) -> list[str]:
        return [r["id"] for r in index.search(query, limit)[0]]

    assert ids(Query(task="shop.send_email", state="failed")) == ["t9", "t6", "t3", "t0"]
    assert ids(Query(args="user4@")) == ["t4"]
    assert ids(Query(worker="h:1", since=T0 + 6)) == ["t9", "t7"]
    assert ids(Query(until=T0 + 1)) == ["t1", "t0"]
    assert ids(Query(task_id="c")) == ["c"] and ids(Query(task_id="nope")) == []
    found, matched = index.search(Query(), limit=3)
    assert [r["id"] for r in found] == ["c", "t9", "t8"] and matched == 11 and "events" not in found[0]


def test_the_index_keeps_the_most_recent_tasks_only() -> None:
    index = TaskIndex(max_tasks=3)
    for i in range(5):
        index.add({"id": f"t{i}", "task": "t", "state": "succeeded", "ts": T0 + i})
    assert list(index.records) == ["t2", "t3", "t4"] and index.get("t0") is None
