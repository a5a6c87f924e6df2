"""The test suite's waiting helpers: `wait_until` goes on as soon as it can, `assert_stays` fails as soon as it must."""

from __future__ import annotations

import itertools
import time

import pytest

from tests.waiting import assert_stays, wait_until


def test_wait_until_returns_the_first_true_value_without_waiting_longer() -> None:
    calls = itertools.count()
    started = time.monotonic()
    assert wait_until(lambda: [n] if (n := next(calls)) >= 3 else [], 5, "three calls", interval_s=0.01) == [3]
    assert time.monotonic() - started < 1


def test_wait_until_fails_after_its_timeout_naming_what_and_the_last_value() -> None:
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"not within 0.2 s: the queue empties \(last value \[\]\)"):
        wait_until(lambda: [], 0.2, "the queue empties")
    with pytest.raises(AssertionError, match=r"not within 0.2 s: the queue holds 3 \(last value 0\)"):
        wait_until(lambda: 0, 0.2, lambda: "the queue holds 3", interval_s=0.05)
    assert 0.4 <= time.monotonic() - started < 2


def test_wait_until_treats_the_exceptions_it_ignores_as_not_yet_and_lets_others_through() -> None:
    calls = itertools.count()

    def flaky() -> bool:
        if next(calls) < 2:
            raise ConnectionError("refused")
        return True

    assert wait_until(flaky, 5, "a node that answers", interval_s=0.01, ignoring=(ConnectionError,)) is True
    with pytest.raises(AssertionError, match=r"raised ConnectionError: refused"):
        wait_until(lambda: (_ for _ in ()).throw(ConnectionError("refused")), 0.05, "x", ignoring=(ConnectionError,))
    with pytest.raises(KeyError):
        wait_until(lambda: {}["missing"], 5, "x")


def test_assert_stays_checks_for_the_whole_duration() -> None:
    calls = itertools.count()
    started = time.monotonic()
    assert_stays(lambda: next(calls) >= 0, 0.3, "always", interval_s=0.05)
    assert 0.3 <= time.monotonic() - started < 1 and next(calls) >= 5


def test_assert_stays_fails_as_soon_as_the_predicate_turns_false() -> None:
    turns_false_at = time.monotonic() + 0.1
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"no longer true after 0\.\d\d s: nothing arrives \(value False\)"):
        assert_stays(lambda: time.monotonic() < turns_false_at, 10, "nothing arrives", interval_s=0.01)
    assert time.monotonic() - started < 1
