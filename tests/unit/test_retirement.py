"""A child's lifecycle state, its max-tasks budget and its memory limit (no broker, no loop)."""

from __future__ import annotations

import pytest

from rabbittask.worker.retirement import Lifecycle, Retirement, State


def test_a_retiring_child_finishes_what_it_holds_and_a_later_hand_back_escalates() -> None:
    life = Lifecycle()
    assert life.running and not life.stopping.is_set()
    assert life.retire("max tasks")
    assert life.state is State.RETIRING and life.reason == "max tasks"
    assert life.stopping.is_set() and not life.handing_back.is_set()  # keeps what it holds
    assert not life.retire("memory")  # once: the supervisor hears of it once
    assert life.reason == "max tasks"
    assert not life.retire("time limit", hand_back=True)  # not again, but what has not started goes back now
    assert life.state is State.SHUTTING_DOWN and life.handing_back.is_set()


def test_a_hard_time_limit_retires_and_hands_back_at_once() -> None:
    life = Lifecycle()
    assert life.retire("a sync task passed its time limit", hand_back=True)
    assert life.state is State.SHUTTING_DOWN and life.handing_back.is_set()


def test_the_first_stop_signal_is_a_warm_shutdown_and_the_second_a_cold_one() -> None:
    life = Lifecycle()
    assert life.signal()
    assert life.state is State.SHUTTING_DOWN and life.stopping.is_set() and life.handing_back.is_set()
    assert not life.retire("max tasks")  # no retirement once shutting down: no successor is wanted
    assert life.state is State.SHUTTING_DOWN
    assert not life.signal() and life.signals == 2


def test_a_stop_signal_while_retiring_hands_back_and_stopped_is_final() -> None:
    life = Lifecycle()
    life.retire("rolling restart, SIGHUP")
    assert life.signal() and life.state is State.SHUTTING_DOWN
    life.stopped()
    assert life.state is State.STOPPED
    assert life.signal() is False and life.state is State.STOPPED


def test_without_limits_nothing_is_capped_or_looked_at() -> None:
    budget = Retirement()
    assert budget.prefetch(16) == 16
    assert not any(budget.delivered() for _ in range(1000))
    assert not any(budget.settled() for _ in range(1000))
    assert budget.tasks_done == 1000 and not budget.over_budget and budget.memory_exceeded() == ""


def test_the_budget_caps_prefetch_holds_the_ack_that_could_bring_one_too_many_and_ends_at_the_last() -> None:
    # Given a budget of 10 and a prefetch of 4: the broker sends 4 + (acks so far), so 6 acks may go out
    budget = Retirement(max_tasks=10)
    assert budget.prefetch(4) == 4
    delivered = [budget.delivered() for _ in range(10)]
    assert delivered == [False] * 9 + [True]  # the 10th delivery is the last
    looks = [budget.settled() for _ in range(7)]
    assert looks == [False] * 6 + [True] and budget.over_budget  # the 7th ack could bring an 11th message


def test_after_a_reconnect_the_prefetch_is_what_is_left_of_the_budget() -> None:
    budget = Retirement(max_tasks=10)
    budget.prefetch(16)
    for _ in range(8):
        budget.delivered()
    assert budget.prefetch(16) == 2  # 8 received on the old channel, 2 left
    assert budget.settled()  # no ack may go out on the new channel before the last two arrived
    assert Retirement(max_tasks=3).prefetch(16) == 3


@pytest.mark.parametrize("limit_bytes, exceeded", [(1, True), (2**50, False)])
def test_the_memory_limit_is_looked_at_after_every_task(limit_bytes: int, exceeded: bool) -> None:
    budget = Retirement(max_memory_bytes=limit_bytes)
    assert budget.settled()  # a memory limit always needs a look
    reason = budget.memory_exceeded()
    assert bool(reason) is exceeded
    if exceeded:
        assert "above --max-memory-per-child" in reason
