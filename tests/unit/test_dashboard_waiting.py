"""The dashboard's views of what waits and ticks: retries with due times, schedules' ticks, run rates, workflows."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from rabbittask import App
from rabbittask.dashboard.history import History
from rabbittask.dashboard.waiting import RATE_WINDOW_S, Waiting
from rabbittask.settings import Settings
from rabbittask.worker import events as ev
from rabbittask.worker.outcome import Outcome, Reason, Republish

T0 = 1_800_000_000.0


def message(ts: float, *events: dict[str, Any]) -> dict[str, Any]:
    return {"host": "web-1", "pid": 7, "ts": ts, "events": list(events)}


def test_a_retry_waits_with_its_due_time_until_a_later_event_says_it_left_the_ladder() -> None:
    history = History({"shop.charge"}, now=T0)
    retried = {"id": "r1", "task": "shop.charge", "state": "retried", "retry_in_s": 30.0, "exc_type": "Timeout"}
    history.feed("task.retried.shop.charge", message(T0, {**retried, "args": "(7,)"}), now=T0)
    history.feed("task.retried.shop.charge", message(T0 + 1, {**retried, "id": "r2", "retry_in_s": 5.0}), now=T0 + 1)
    rows = history.waiting.delayed_rows(now=T0 + 2)
    # Soonest due first, with the time left and why it waits
    assert [(r["id"], r["due"], r["due_in_s"]) for r in rows] == [("r2", T0 + 6, 4.0), ("r1", T0 + 30, 28.0)]
    assert (rows[1]["exc_type"], rows[1]["args"], rows[1]["worker"]) == ("Timeout", "(7,)", "web-1:7")
    # Once it ran again it no longer waits; overdue ones show a negative time left
    done = {"id": "r2", "task": "shop.charge", "state": "succeeded", "runtime_s": 0.1}
    history.feed("task.succeeded.shop.charge", message(T0 + 7, done), now=T0 + 7)
    assert [(r["id"], r["due_in_s"]) for r in history.waiting.delayed_rows(now=T0 + 40)] == [("r1", -10.0)]


def test_an_older_event_read_late_does_not_take_a_retry_off_the_list() -> None:
    waiting = Waiting()
    waiting.add({"id": "a", "task": "t", "state": "retried", "retry_in_s": 10, "ts": T0})
    waiting.add({"id": "a", "task": "t", "state": "started", "ts": T0 - 5})  # the run before the retry
    assert [r["id"] for r in waiting.delayed_rows(T0)] == ["a"]


def test_the_measured_rate_counts_starts_of_the_last_minute_or_finished_runs_without_started_events() -> None:
    waiting = Waiting()
    for i in range(120):  # 2 runs a second for a minute, finished only (events_started off)
        waiting.add({"id": f"f{i}", "task": "t.fin", "state": "succeeded", "ts": T0 + i / 2})
    for i in range(30):
        waiting.add({"id": f"s{i}", "task": "t.start", "state": "started", "ts": T0 + 30 + i})
        waiting.add({"id": f"s{i}", "task": "t.start", "state": "succeeded", "ts": T0 + 30.5 + i})
    now = T0 + 60
    assert waiting.run_rate("t.fin", now) == (120 / RATE_WINDOW_S, "finished")
    assert waiting.run_rate("t.start", now) == (0.5, "started")
    assert waiting.run_rate("t.none", now) == (0.0, "finished")
    assert waiting.run_rate("t.fin", now + 120) == (0.0, "finished")  # an idle minute later


def test_each_schedule_shows_its_latest_tick_from_the_history_and_its_next_slot() -> None:
    app = App("sched-views")

    @app.task(queue="sched-views.q", name="sv.report")
    def report() -> None: ...

    app.schedule("hourly-report", report.s(), every=3600)
    app.schedule("nightly", report.s(), cron="0 3 * * *")
    waiting = Waiting()
    for slot in ("2027-01-15T07:00:00Z", "2027-01-15T09:00:00Z", "2027-01-15T08:00:00Z"):
        waiting.add({"id": f"hourly-report@{slot}", "task": "sv.report", "state": "succeeded", "ts": T0})
    waiting.add({"id": "odd@not-a-slot", "task": "sv.report", "state": "succeeded", "ts": T0})
    now = 1_800_000_000.0 + 1234.0
    rows = {r["name"]: r for r in waiting.schedule_rows(app.schedules, now)}
    hourly = rows["hourly-report"]
    assert (hourly["last_tick_id"], hourly["when"]) == ("hourly-report@2027-01-15T09:00:00Z", "every 3600 s")
    assert hourly["last_tick"] == datetime(2027, 1, 15, 9, tzinfo=UTC).timestamp()
    assert hourly["next_tick"] == (now // 3600 + 1) * 3600
    assert rows["nightly"]["last_tick"] is None and rows["nightly"]["when"].startswith("cron 0 3 * * *")
    assert rows["nightly"]["next_tick"] > now


def test_the_task_page_names_its_workflow_and_counts_the_workflows_tasks_by_state() -> None:
    history = History(now=T0)
    for i, state in enumerate(("succeeded", "succeeded", "failed")):
        event = {"id": f"m{i}", "task": "shop.step", "state": state, "workflow": "wf-1", "runtime_s": 0.1}
        history.feed(f"task.{state}.shop.step", message(T0 + i, event), now=T0 + i)
    history.feed("task.succeeded.shop.other", message(T0, {"id": "x", "task": "shop.other", "state": "succeeded"}))
    record = history.index.get("m0")
    assert record is not None and record["workflow"] == "wf-1"
    found = history.index.workflow("wf-1")
    assert (found["seen"], found["states"]) == (3, {"succeeded": 2, "failed": 1})
    assert [t["id"] for t in found["tasks"]] == ["m0", "m1", "m2"]
    assert history.index.get("x")["workflow"] is None  # type: ignore[index]


def delivered(mid: str, headers: dict[str, Any] | None) -> Any:
    props = SimpleNamespace(message_id=mid, message_type="t.add", headers=headers)
    return SimpleNamespace(header=SimpleNamespace(properties=props))


def test_task_events_carry_the_workflow_id_of_the_message() -> None:
    # Given a message of a workflow (header rt-workflow) and one outside any
    in_flow, alone = delivered("a", {"rt-workflow": "wf-9"}), delivered("b", None)
    e = ev.Events(Settings(), None, "app", ["q"], lambda: {}, publish=False)  # type: ignore[arg-type]
    e.record(Outcome(in_flow, "t.add", runtime_s=0.1))
    e.record(Outcome(alone, "t.add", runtime_s=0.1))
    # Then succeeded, retried and started events carry it, and none when there is none
    succeeded = ev.succeeded_events(e.succeeded)["task.succeeded.t.add"]
    assert [x.get("workflow") for x in succeeded] == ["wf-9", None]
    retry = Outcome(in_flow, "t.add", reason=Reason.RETRY, runtime_s=0.1, republish=Republish(delay_s=2.0, headers={}))
    assert ev.task_events([retry])["task.retried.t.add"][0]["workflow"] == "wf-9"
    log: ev.MessageLog = ev.deque([(in_flow, T0)])  # type: ignore[attr-defined]
    assert ev.started_events("started", log)["task.started.t.add"][0]["workflow"] == "wf-9"
