"""Time limits (soft exceptions into threads, hard limits, async cancellation) and task limit options."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from rabbittask import App, ConfigError, SoftTimeLimitExceeded, TimeLimitExceeded
from rabbittask.worker.execute import run_async
from rabbittask.worker.limits import MemoryLimit, ThreadLimits
from rabbittask.worker.outcome import Reason
from tests.waiting import wait_until


class FakeMessage:
    """Enough of a delivered message for `execute`."""

    class header:  # noqa: N801 - mirrors aiormq's attribute names
        class properties:  # noqa: N801
            message_id = "m1"
            headers = None

    body = b""


def make_app() -> App:
    return App("limits")


def test_a_soft_limit_raises_inside_the_running_thread() -> None:
    app = make_app()

    @app.task(soft_time_limit=0.2, time_limit=5)
    def slow() -> None: ...

    limits = ThreadLimits()
    seen: list[str] = []

    def run() -> None:
        entry = limits.start(slow, FakeMessage())  # type: ignore[arg-type]
        assert entry is not None
        try:
            for _ in range(100):
                time.sleep(0.01)
            seen.append("finished")
        except SoftTimeLimitExceeded:
            seen.append("soft")
        assert limits.finish(entry) is False

    thread = threading.Thread(target=run)
    thread.start()

    def ended() -> bool:  # checked as a worker does: the soft limit is raised in the thread, no hard limit
        assert limits.check(time.monotonic()) == []
        return not thread.is_alive()

    wait_until(ended, 5, "the thread ends after its soft limit", interval_s=0.02)
    thread.join(1)
    assert seen == ["soft"]


def test_a_hard_limit_abandons_the_thread_and_drops_its_outcome() -> None:
    app = make_app()

    @app.task(time_limit=0.1)
    def stuck() -> None: ...

    limits = ThreadLimits()
    entry = limits.start(stuck, FakeMessage())  # type: ignore[arg-type]
    assert entry is not None
    assert limits.check(time.monotonic()) == []
    (hit,) = limits.check(time.monotonic() + 0.2)
    assert hit is entry
    assert limits.finish(entry) is True  # the thread came back late: its outcome is dropped
    assert limits.check(time.monotonic() + 1) == []


def test_a_task_without_limits_is_not_tracked() -> None:
    app = make_app()

    @app.task
    def free() -> None: ...

    assert ThreadLimits().start(free, FakeMessage()) is None  # type: ignore[arg-type]


async def run_limited(task: Any) -> Any:
    return await run_async(task, (), {}, FakeMessage())  # type: ignore[arg-type]


async def test_an_async_task_is_cancelled_at_its_hard_limit() -> None:
    app = make_app()

    @app.task(time_limit=0.05)
    async def sleepy() -> None:
        await asyncio.sleep(5)

    outcome = await run_limited(sleepy)
    assert outcome.reason == Reason.TIME_LIMIT and outcome.exc_type == "TimeLimitExceeded"
    assert "time_limit of 0.05 s" in outcome.exc_message


async def test_an_async_task_is_cancelled_at_its_soft_limit_and_sees_it_as_cancellation() -> None:
    app = make_app()
    cancelled: list[bool] = []

    @app.task(soft_time_limit=0.05, time_limit=5)
    async def sleepy() -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    outcome = await run_limited(sleepy)
    assert cancelled == [True]
    assert outcome.reason == Reason.SOFT_TIME_LIMIT and outcome.exc_type == "SoftTimeLimitExceeded"


async def test_a_time_limit_is_retried_when_the_retry_policy_names_it() -> None:
    app = make_app()

    @app.task(time_limit=0.05, autoretry_for=(TimeLimitExceeded,), max_retries=2)
    async def sleepy() -> None:
        await asyncio.sleep(5)

    outcome = await run_limited(sleepy)
    assert outcome.reason == "retry" and outcome.republish is not None


async def test_a_tasks_own_timeout_error_is_a_plain_failure() -> None:
    app = make_app()

    @app.task(time_limit=5)
    async def own() -> None:
        raise TimeoutError("upstream timed out")

    outcome = await run_limited(own)
    assert outcome.reason == "task raised" and outcome.exc_type == "TimeoutError"


def test_time_limits_are_checked_when_the_task_is_declared() -> None:
    app = make_app()
    with pytest.raises(ConfigError, match="soft_time_limit \\(10 s\\) must be shorter than time_limit \\(5 s\\)"):
        app.task(name="a", soft_time_limit=10, time_limit=5)(lambda: None)
    with pytest.raises(ConfigError, match="time_limit must be a positive number of seconds"):
        app.task(name="b", time_limit=0)(lambda: None)


def test_limits_are_exported_as_exceptions() -> None:
    assert issubclass(SoftTimeLimitExceeded, Exception) and issubclass(TimeLimitExceeded, Exception)


def test_the_memory_limit_reads_rss_at_most_every_10_ms() -> None:
    limit = MemoryLimit(1)  # one byte: any process is above it
    assert limit.exceeded(force=True) > 1
    assert limit.exceeded() == 0  # read a moment ago: not read again
    assert MemoryLimit(2**50).exceeded(force=True) == 0
