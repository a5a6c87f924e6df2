"""A blocking wait for another task from inside a running task is refused, saying why and what to do instead."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rabbittask import App, TaskHandle, WaitInTaskRefused
from rabbittask.context import running


def add(a: int, b: int) -> int:
    return a + b


@pytest.fixture
def inside_a_task() -> Iterator[None]:
    """What the worker does around a run: the running task's name and id in the context."""
    token = running.set(("shop.report", "r-1"))
    yield
    running.reset(token)


def test_call_inside_a_running_task_is_refused_with_the_reason_and_the_ways_out(inside_a_task: None) -> None:
    app = App("shop")
    task = app.task(name="shop.add")(add)
    with pytest.raises(WaitInTaskRefused) as info:
        task.call(1, 2, timeout=1)
    assert isinstance(info.value, RuntimeError)
    assert str(info.value) == (
        "task 'shop.report' (id r-1) waits for task 'shop.add' with .call() while it runs: a blocking wait inside "
        "a task can deadlock its worker, because the task it waits for may need the thread, process or prefetch "
        "slot this one holds. Instead send the work with .delay() and return (let that task carry it on), or in "
        "an async task use `await task.acall(...)`. To wait anyway, where the awaited task runs on other workers, "
        "set allow_join_in_task=True on the App (RABBITTASK_ALLOW_JOIN_IN_TASK=true)."
    )


def test_get_inside_a_running_task_is_refused_and_names_the_awaited_task(inside_a_task: None) -> None:
    app = App("shop")
    handle = TaskHandle("h-7", "shop.add", "default", app)
    with pytest.raises(WaitInTaskRefused) as info:
        handle.get(timeout=1)
    assert str(info.value).startswith(
        "task 'shop.report' (id r-1) waits for the result of task 'shop.add' (id h-7) with .get() while it runs"
    )
    assert "`await handle.aget()`" in str(info.value)


def test_allow_join_in_task_lets_a_task_wait(inside_a_task: None) -> None:
    # With the opt-out, the call goes on to the result backend (here: none configured, which says so).
    app = App("shop", allow_join_in_task=True)
    handle = TaskHandle("h-7", "shop.add", "default", app)
    with pytest.raises(Exception) as info:
        handle.get(timeout=1)
    assert not isinstance(info.value, WaitInTaskRefused)
    assert "has no result backend" in str(info.value)


def test_outside_a_task_nothing_is_refused() -> None:
    app = App("shop")
    handle = TaskHandle("h-7", "shop.add", "default", app)
    with pytest.raises(Exception) as info:
        handle.get(timeout=1)
    assert "has no result backend" in str(info.value)
