"""Schedule entries without a broker: declaration errors, slots, cron's DST rules on a frozen clock."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from rabbittask import App, ArgumentsInvalid, ConfigError, Signature
from rabbittask.beat.entry import ScheduleEntry
from rabbittask.beat.state import tick_id

BERLIN = ZoneInfo("Europe/Berlin")


def berlin(*args: int) -> float:
    return datetime(*args, tzinfo=BERLIN).timestamp()  # type: ignore[misc]


def iso_utc(t: float) -> str:
    return datetime.fromtimestamp(t, ZoneInfo("UTC")).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def app() -> App:
    app = App("sched-unit")

    @app.task(queue="reports", name="report")
    def report(day: str, limit: int = 10) -> str:
        return day

    return app


def entry(cron: str, tz: str = "Europe/Berlin") -> ScheduleEntry:
    return ScheduleEntry("e", "t", (), {}, "q", cron=cron, tz=tz)


# -- declaring ---------------------------------------------------------------------------------------


def test_schedule_with_a_signature_keeps_its_arguments_and_the_task_queue(app: App) -> None:
    sig = app.tasks["report"].s(day="yesterday")
    assert isinstance(sig, Signature) and sig.kwargs == {"day": "yesterday"}
    e = app.schedule("nightly-report", sig, cron="0 3 * * *", tz="Europe/Berlin")
    assert (e.task_name, e.queue, e.args, e.kwargs, e.tz) == (
        "report",
        "reports",
        (),
        {"day": "yesterday"},
        "Europe/Berlin",
    )
    assert app.schedules["nightly-report"] is e


def test_schedule_with_a_task_takes_args_and_kwargs_and_a_queue_of_its_own(app: App) -> None:
    e = app.schedule("half-minute", app.tasks["report"], every=timedelta(seconds=30), args=["today"], queue="urgent")
    assert e.every_s == 30 and e.args == ("today",) and e.queue == "urgent"
    assert "urgent" in app.queues  # declared like a task queue, so workers can consume it with -Q urgent


def test_bad_cron_expression_fails_at_declaration(app: App) -> None:
    with pytest.raises(ConfigError, match=r"schedule 'x': invalid cron expression '61 \* \* \* \*'"):
        app.schedule("x", app.tasks["report"].s("d"), cron="61 * * * *")


def test_cron_with_six_fields_is_refused_with_a_hint(app: App) -> None:
    with pytest.raises(ConfigError, match="has 6 field.*use every= below a minute"):
        app.schedule("x", app.tasks["report"].s("d"), cron="*/5 * * * * *")


def test_unknown_time_zone_fails_at_declaration(app: App) -> None:
    with pytest.raises(ConfigError, match="unknown time zone 'Europe/Berlinn'"):
        app.schedule("x", app.tasks["report"].s("d"), cron="0 3 * * *", tz="Europe/Berlinn")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "exactly one of cron= and every="),
        ({"cron": "0 3 * * *", "every": 60}, "exactly one of cron= and every="),
        ({"every": timedelta(milliseconds=1500)}, "whole number of seconds"),
        ({"every": 0}, "whole number of seconds, at least 1"),
        ({"every": 5, "catch_up": "sometimes"}, "catch_up='sometimes' is not a policy"),
        ({"every": 5, "expires": -1}, "expires must be a positive"),
    ],
)
def test_bad_schedule_options_fail_at_declaration(app: App, options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        app.schedule("x", app.tasks["report"].s("d"), **options)  # type: ignore[arg-type]


def test_schedule_arguments_are_validated_at_declaration(app: App) -> None:
    partial = app.tasks["report"].s(limit=3)  # a partial signature: a workflow may give `day` later
    with pytest.raises(ArgumentsInvalid, match="invalid arguments for task 'report': day: Missing"):
        app.schedule("x", partial, every=5)
    with pytest.raises(ArgumentsInvalid, match="limit"):
        app.schedule("x", app.tasks["report"], every=5, kwargs={"day": "d", "limit": "many"})


def test_schedule_names_are_unique_and_cannot_hold_an_at_sign(app: App) -> None:
    app.schedule("a", app.tasks["report"].s("d"), every=5)
    with pytest.raises(ConfigError, match="declared twice"):
        app.schedule("a", app.tasks["report"].s("d"), every=5)
    with pytest.raises(ConfigError, match="no '@'"):
        app.schedule("a@b", app.tasks["report"].s("d"), every=5)


def test_a_task_of_another_app_is_refused(app: App) -> None:
    other = App("other")
    t = other.task(lambda: None, name="other.noop")
    with pytest.raises(ConfigError, match="belongs to another app"):
        app.schedule("x", t.s(), every=5)


# -- slots and ids -----------------------------------------------------------------------------------


def test_every_slots_are_counted_from_the_epoch_so_every_replica_agrees() -> None:
    e = ScheduleEntry("e", "t", (), {}, "q", every_s=30)
    assert e.next_after(1000.0) == 1020.0 and e.next_after(1020.0) == 1050.0
    assert list(e.slots(1000.0, 1100.0)) == [1020.0, 1050.0, 1080.0]
    assert list(e.slots_back(1100.0, 1000.0)) == [1080.0, 1050.0, 1020.0]


def test_tick_ids_are_the_entry_name_and_the_slot_in_utc() -> None:
    assert tick_id("nightly-report", berlin(2025, 3, 31, 3, 0)) == "nightly-report@2025-03-31T01:00:00Z"


# -- DST, as cron does it (frozen clock: pure functions of the time) ------------------------------------


def test_fixed_time_in_the_skipped_hour_fires_once_right_after_the_change() -> None:
    # 2025-03-30, Europe/Berlin: 02:00 CET jumps to 03:00 CEST, so 02:30 never happens.
    e = entry("30 2 * * *")
    slots = list(e.slots(berlin(2025, 3, 29, 12, 0), berlin(2025, 3, 31, 12, 0)))
    assert [iso_utc(s) for s in slots] == ["2025-03-30T01:00:00Z", "2025-03-31T00:30:00Z"]  # 03:00 CEST, 02:30 CEST


def test_fixed_time_in_the_repeated_hour_fires_once_on_its_first_pass() -> None:
    # 2025-10-26, Europe/Berlin: 03:00 CEST falls back to 02:00 CET, so 02:30 happens twice.
    e = entry("30 2 * * *")
    slots = list(e.slots(berlin(2025, 10, 25, 12, 0), berlin(2025, 10, 27, 12, 0)))
    assert [iso_utc(s) for s in slots] == ["2025-10-26T00:30:00Z", "2025-10-27T01:30:00Z"]  # 02:30 CEST, 02:30 CET


def test_wildcard_entries_follow_the_wall_clock_through_both_changes() -> None:
    hourly = entry("30 * * * *")
    spring = [iso_utc(s) for s in hourly.slots(berlin(2025, 3, 30, 0, 0), berlin(2025, 3, 30, 4, 0))]
    assert spring == ["2025-03-29T23:30:00Z", "2025-03-30T00:30:00Z", "2025-03-30T01:30:00Z"]  # 00:30, 01:30, 03:30
    autumn = [iso_utc(s) for s in hourly.slots(berlin(2025, 10, 26, 1, 0), berlin(2025, 10, 26, 4, 0))]
    # 01:30 CEST, 02:30 CEST, 02:30 CET, 03:30 CET: the repeated hour fires twice
    assert autumn == ["2025-10-25T23:30:00Z", "2025-10-26T00:30:00Z", "2025-10-26T01:30:00Z", "2025-10-26T02:30:00Z"]
    quarter = entry("*/15 2 * * *")  # a wildcard minute: nothing in the skipped hour
    assert list(quarter.slots(berlin(2025, 3, 30, 0, 0), berlin(2025, 3, 30, 12, 0))) == []


@pytest.mark.parametrize("cron", ["30 2 * * *", "30 * * * *", "*/15 2 * * *", "0,30 2 * * *", "@daily", "*/7 * * * *"])
@pytest.mark.parametrize("day", [(2025, 3, 29), (2025, 10, 25)])
def test_the_next_slot_from_any_frozen_instant_agrees_with_the_sequence(cron: str, day: tuple[int, int, int]) -> None:
    # Given the slots of two days around a DST change, walked forwards and backwards
    e = entry(cron)
    start = berlin(*day, 12, 0)
    forward = list(e.slots(start, start + 2 * 86400))
    assert list(e.slots_back(start + 2 * 86400, start))[::-1] == forward
    # Then from any frozen instant, the next slot is the first later one of that sequence
    rng = random.Random(11)
    for _ in range(300):
        t = rng.uniform(start, start + 86400)
        assert e.next_after(t) == min(s for s in forward if s > t)


def test_cron_in_utc_has_no_dst_surprises() -> None:
    e = entry("30 2 * * *", tz="UTC")
    slots = list(e.slots(berlin(2025, 10, 25, 12, 0), berlin(2025, 10, 27, 12, 0)))
    assert [iso_utc(s) for s in slots] == ["2025-10-26T02:30:00Z", "2025-10-27T02:30:00Z"]
