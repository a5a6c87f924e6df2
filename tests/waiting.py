"""Waiting in tests: until something happens (`wait_until`), or while something must not (`assert_stays`).

A test never sleeps a fixed time before asserting that something happened: it waits until it has,
up to a bound, and goes on as soon as it has. A fixed time is right only to show that something
does NOT happen; `assert_stays` then checks all along, and fails at the first moment it does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
What = str | Callable[[], str]
"""What is awaited, for the failure message; a callable is asked at the failure (to show the state then)."""

INTERVAL_S = 0.05


def _say(what: What) -> str:
    return what() if callable(what) else what


def wait_until(
    predicate: Callable[[], T],
    timeout_s: float,
    what: What = "",
    *,
    interval_s: float = INTERVAL_S,
    ignoring: tuple[type[Exception], ...] = (),
) -> T:
    """Call `predicate` every `interval_s` until it returns a true value, and return that value.

    Fail naming `what` (and the last value, or the last ignored exception) when `timeout_s` passes.
    Exceptions of the types in `ignoring` count as "not yet"; any other propagates at once (a
    predicate that raises AssertionError ends the wait early, e.g. when the process it waits on died).
    """
    started = time.monotonic()
    while True:
        try:
            value = predicate()
        except ignoring as e:
            last = f"raised {type(e).__name__}: {e}"
        else:
            if value:
                return value
            last = f"last value {value!r}"
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s:g} s: {_say(what) or predicate} ({last})"[:4000])
        time.sleep(interval_s)


def assert_stays(
    predicate: Callable[[], object],
    duration_s: float,
    what: What = "",
    *,
    interval_s: float = INTERVAL_S,
) -> None:
    """Check `predicate` every `interval_s` for `duration_s` (at once, and at the end); fail as soon as it is false."""
    started = time.monotonic()
    while True:
        value = predicate()
        elapsed = time.monotonic() - started
        if not value:
            raise AssertionError(f"no longer true after {elapsed:.2f} s: {_say(what) or predicate} (value {value!r})")
        if elapsed >= duration_s:
            return
        time.sleep(min(interval_s, duration_s - elapsed))
