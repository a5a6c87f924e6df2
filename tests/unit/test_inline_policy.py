"""Which sync tasks run on the worker child's event loop (rabbittask/worker/inline.py)."""

from __future__ import annotations

import asyncio
import time

from rabbittask import App
from rabbittask.worker.inline import BURST_S, PROVEN_AFTER, InlinePolicy


def make_app() -> App:
    app = App("inline-tests", broker_url="amqp://guest:guest@localhost:5672/")

    @app.task(name="short")
    def short() -> None: ...

    @app.task(name="limited", time_limit=5.0)
    def limited() -> None: ...

    return app


def test_a_task_runs_inline_after_proving_short_and_a_slow_run_doubles_what_it_must_prove() -> None:
    task = make_app().tasks["short"]
    policy = InlinePolicy(max_s=0.001)
    for _ in range(PROVEN_AFTER - 1):
        policy.observe(task, 0.0001)
    assert not policy.inline(task)
    policy.observe(task, 0.0001)
    assert policy.inline(task)

    policy.observe(task, 0.002)  # one slow run: back to the thread until 2 x PROVEN_AFTER fast runs in a row
    assert not policy.inline(task)
    for _ in range(2 * PROVEN_AFTER - 1):
        policy.observe(task, 0.0001)
    assert not policy.inline(task)
    policy.observe(task, 0.0001)
    assert policy.inline(task)


def test_a_task_with_time_limits_never_runs_inline() -> None:
    task = make_app().tasks["limited"]
    policy = InlinePolicy(max_s=0.001)
    for _ in range(10 * PROVEN_AFTER):
        policy.observe(task, 0.0001)
    assert not policy.inline(task)


def test_inline_work_past_the_burst_budget_waits_for_the_next_loop_pass() -> None:
    async def scenario() -> list[str]:
        policy = InlinePolicy(max_s=0.001)
        order: list[str] = []
        loop = asyncio.get_running_loop()
        policy.spent(BURST_S)  # this pass has used its budget
        waiter = asyncio.ensure_future(policy.turn())
        loop.call_soon(order.append, "same pass")
        await asyncio.sleep(0)
        order.append("waiter done" if waiter.done() else "waiter waits")
        await asyncio.wait_for(waiter, 1.0)
        order.append("waiter done")
        return order

    started = time.monotonic()
    assert asyncio.run(scenario()) == ["same pass", "waiter waits", "waiter done"]
    assert time.monotonic() - started < 1.0
