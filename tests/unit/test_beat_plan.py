"""Which ticks a scheduler sends at a given (frozen) time: grace, catch-up policies, state."""

from __future__ import annotations

from rabbittask.beat.entry import CatchUp, ScheduleEntry
from rabbittask.beat.plan import due
from rabbittask.beat.state import State, decode_state, encode_state, merge


def every(seconds: int, catch_up: CatchUp = "skip", limit: int = 100, grace_s: float = 30.0) -> ScheduleEntry:
    return ScheduleEntry(
        "e", "t", (), {}, "q", every_s=seconds, catch_up=catch_up, catch_up_limit=limit, grace_s=grace_s
    )


def test_nothing_is_due_before_the_next_slot_or_when_the_clock_is_behind_the_state() -> None:
    assert due(every(10), done_until=1000.0, now=1009.9).fire == []
    assert due(every(10), done_until=1000.0, now=990.0).fire == []  # a replica whose clock lags


def test_slots_a_takeover_delayed_are_sent_in_order_whatever_the_policy() -> None:
    # The active scheduler died after 1000; its successor runs at 1003.4, within the grace
    d = due(every(1, catch_up="skip"), done_until=1000.0, now=1003.4)
    assert d.fire == [1001.0, 1002.0, 1003.0] and d.skipped == 0 and d.done_until == 1003.0


def test_skip_drops_ticks_missed_while_no_scheduler_ran() -> None:
    # Down from 1000 to 1100 (grace 30 s): 1001..1070 were missed, 1071..1100 are still on time
    d = due(every(1, catch_up="skip"), done_until=1000.0, now=1100.0)
    assert d.fire == [float(s) for s in range(1071, 1101)] and d.skipped == 70


def test_skip_with_no_on_time_slot_still_moves_the_state_past_what_it_dropped() -> None:
    d = due(every(60, catch_up="skip", grace_s=5), done_until=0.0, now=1000.0)
    assert d.fire == [] and d.skipped == 16 and d.done_until == 995.0


def test_once_sends_the_latest_missed_tick() -> None:
    d = due(every(60, catch_up="once", grace_s=5), done_until=0.0, now=1000.0)
    assert d.fire == [960.0] and d.skipped == 15 and d.done_until == 995.0


def test_all_sends_the_missed_ticks_up_to_the_bound() -> None:
    d = due(every(60, catch_up="all", limit=3, grace_s=5), done_until=0.0, now=1000.0)
    assert d.fire == [840.0, 900.0, 960.0] and d.skipped == 13
    d = due(every(60, catch_up="all", limit=100, grace_s=5), done_until=0.0, now=1000.0)
    assert d.fire == [60.0 * i for i in range(1, 17)] and d.skipped == 0


def test_a_long_outage_of_a_frequent_schedule_is_counted_without_walking_every_slot() -> None:
    d = due(every(1, catch_up="once"), done_until=0.0, now=10_000_000.0)
    assert len(d.fire) == 31 and d.skipped == 10_000 and d.skipped_more


def test_state_round_trips_and_merges_to_the_latest_time_per_entry() -> None:
    body = encode_state({"a": 1000.0, "b": 1500.25}, "host:1", 1600.5)
    state = decode_state(body)
    assert state == State({"a": 1000.0, "b": 1500.25}, "host:1", 1600.5)
    merged = merge([state, State({"a": 1100.0, "c": 5.0}, "host:2", 1200.0)])
    assert merged.done_until == {"a": 1100.0, "b": 1500.25, "c": 5.0} and merged.by == "host:1"
