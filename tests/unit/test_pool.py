"""The supervisor's pool without processes: autoscale decisions from the children's loads, and its bounds."""

from __future__ import annotations

import pytest

from rabbittask.worker.options import WorkerOptions
from rabbittask.worker.pool import BUSY, IDLE, IDLE_S, WORKING, ChildProc, Pool, parse_autoscale


def child(pid: int, load: bytes, since: float = 0.0) -> ChildProc:
    c = ChildProc(pid, pid, -1, 0.0)
    c.load, c.load_since = load, since
    return c


def test_the_pool_grows_one_child_a_second_while_every_child_is_busy_up_to_its_maximum() -> None:
    pool = Pool(1, (3, 1))
    assert pool.tick([child(1, BUSY)], now=10.0) == [] and pool.target == 2
    assert pool.tick([child(1, BUSY), child(2, BUSY)], now=10.5) == [] and pool.target == 2  # not within a second
    pool.tick([child(1, BUSY), child(2, BUSY)], now=11.0)
    assert pool.target == 3
    pool.tick([child(1, BUSY), child(2, BUSY), child(3, BUSY)], now=20.0)
    assert pool.target == 3  # the maximum
    pool.tick([child(1, BUSY), child(2, WORKING), child(3, BUSY)], now=30.0)
    assert pool.target == 3


def test_the_pool_retires_an_idle_child_once_one_has_been_idle_long_enough() -> None:
    pool = Pool(3, (3, 1))
    children = [child(1, WORKING), child(2, IDLE, since=100.0), child(3, BUSY)]
    assert pool.tick(children, now=100.0 + IDLE_S - 0.1) == []
    (retired,) = pool.tick(children, now=100.0 + IDLE_S)
    assert retired.pid == 2 and pool.target == 2
    pool = Pool(1, (3, 1))
    assert pool.tick([child(1, IDLE)], now=1000.0) == [] and pool.target == 1  # never below the minimum


def test_pool_grow_and_shrink_stay_within_the_bounds_and_never_below_one() -> None:
    pool = Pool(2, (4, 2))
    assert pool.grow(5) == 4 and pool.shrink(9) == 2
    fixed = Pool(3)
    assert fixed.grow(2) == 5 and fixed.shrink(10) == 1
    assert [c.pid for c in fixed.tick([child(1, BUSY), child(2, IDLE), child(3, WORKING)], now=0.0)] == [2, 3]


def test_a_child_says_its_load_with_the_last_byte_it_sent() -> None:
    c = child(1, IDLE)
    c.heard(b"UCBW")
    assert c.load == WORKING
    c.heard(b"R")
    assert c.load == WORKING


def test_autoscale_takes_max_then_min_and_says_what_is_wrong() -> None:
    assert parse_autoscale("8,2") == (8, 2)
    for bad, says in (("8", "is not MAX,MIN"), ("2,8", "need 1 <= MIN <= MAX"), ("a,b", "is not MAX,MIN")):
        with pytest.raises(ValueError, match=says):
            parse_autoscale(bad)
    with pytest.raises(ValueError, match="autoscale"):
        WorkerOptions(autoscale="0,0")
    assert Pool(1, (4, 2)).target == 2  # -c below the minimum starts the minimum
