"""The dashboard's memory: per-minute counts of the last hour, recent failures, live workers."""

from __future__ import annotations

from typing import Any

from rabbittask.dashboard.history import FAILURES, MINUTES, History

T0 = 1_800_000_000.0  # a whole minute


def tasks(*states: str, task: str = "t.add") -> dict[str, Any]:
    return {
        "host": "h",
        "pid": 7,
        "ts": 0,
        "events": [{"id": f"m{i}", "task": task, "state": s} for i, s in enumerate(states)],
    }


def test_counts_are_kept_per_minute_for_the_last_hour_from_the_dashboards_start() -> None:
    history = History({"t.add"}, now=T0)
    history.feed("task.succeeded.t.add", tasks("succeeded", "succeeded"), now=T0 + 5)
    history.feed("task.failed.t.add", tasks("failed"), now=T0 + 65)
    rates = history.rates(now=T0 + 70)
    assert rates == {"minutes": [T0, T0 + 60], "series": {"failed": [0, 1], "succeeded": [2, 0]}}
    # An hour later the first minute has left the ring; the totals since start stay
    history.feed("task.retried.t.add", tasks("retried"), now=T0 + 60 * MINUTES + 1)
    rates = history.rates(now=T0 + 60 * MINUTES + 1)
    assert len(rates["minutes"]) == MINUTES and rates["minutes"][0] == T0 + 60
    assert rates["series"]["succeeded"] == [0] * MINUTES
    assert rates["series"]["failed"][0] == 1 and rates["series"]["retried"][-1] == 1
    assert history.totals == {"succeeded": 2, "failed": 1, "retried": 1}


def test_failures_of_other_apps_on_the_same_exchange_are_not_counted() -> None:
    history = History({"t.add"}, now=T0)
    history.feed("task.failed.other.job", tasks("failed", task="other.job"), now=T0)
    assert not history.failures and not history.totals


def test_recent_failures_are_newest_first_and_bounded() -> None:
    history = History({"t.add"}, now=T0)
    for i in range(FAILURES + 5):
        body = tasks("failed")
        body["events"][0] |= {"id": f"f{i}", "traceback": "Traceback ...", "reason": "task raised"}
        history.feed("task.failed.t.add", body, now=T0 + i)
    assert len(history.failures) == FAILURES
    newest = history.failures[0]
    assert (newest["id"], newest["ts"], newest["host"], newest["traceback"]) == (
        f"f{FAILURES + 4}",
        T0 + FAILURES + 4,
        "h",
        "Traceback ...",
    )


def test_a_worker_child_is_live_until_it_goes_offline_or_its_heartbeats_stop() -> None:
    history = History(now=T0)
    beat = {"host": "h", "pid": 1, "ppid": 9, "queues": ["q"], "interval_s": 2.0}
    history.feed("worker.heartbeat", beat, now=T0)
    history.feed("worker.heartbeat", beat | {"pid": 2}, now=T0)
    assert [b.pid for b in history.live_beats(now=T0 + 5)] == [1, 2]
    history.feed("worker.offline", beat, now=T0 + 5)
    assert [b.pid for b in history.live_beats(now=T0 + 5)] == [2]
    assert history.live_beats(now=T0 + 6.1) == []  # three intervals without a heartbeat


def test_a_task_reported_failed_and_dead_lettered_is_one_failure_and_one_that_never_ran_is_listed_too() -> None:
    history = History({"t.add"}, now=T0)
    failed = {"id": "m1", "task": "t.add", "reason": "task raised", "exc_type": "ValueError"}
    history.feed("task.dead-lettered.t.add", {"host": "h", "pid": 7, "events": [failed | {"state": "dead-lettered"}]})
    history.feed(
        "task.failed.t.add", {"host": "h", "pid": 7, "events": [failed | {"state": "failed", "traceback": "tb"}]}
    )
    invalid = {"id": "m2", "task": "t.add", "state": "dead-lettered", "reason": "invalid arguments"}
    history.feed("task.dead-lettered.t.add", {"host": "h", "pid": 7, "events": [invalid]})
    history.feed(
        "task.failed.t.add", {"host": "h", "pid": 7, "events": [failed | {"state": "failed", "traceback": "tb"}]}
    )
    assert [(f["id"], f["state"], f.get("traceback")) for f in history.failures] == [
        ("m2", "dead-lettered", None),
        ("m1", "failed", "tb"),
    ]
