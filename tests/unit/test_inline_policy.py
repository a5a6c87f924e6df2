"""Which sync tasks run on the worker child's event loop, and how they run there (rabbittask/worker/inline.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

from rabbittask import App
from rabbittask.message import CONTENT_TYPE, encode_body
from rabbittask.worker.inline import BURST_S, PROVEN_AFTER, InlinePolicy, InlineRunner
from rabbittask.worker.outcome import Outcome, Reason
from rabbittask.worker.redelivery import Redeliveries
from rabbittask.worker.retirement import Lifecycle


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


class Threads:
    """The task threads, as the inline runner sees them: nothing pending, nothing handed over."""

    pending = 0

    def put(self, message: Any) -> None:
        raise AssertionError("the inline runner handed a message to the thread")


def runner_for(app: App, settled: list[Outcome]) -> InlineRunner:
    policy = InlinePolicy(max_s=1.0)
    for task in app.tasks.values():  # proven short
        for _ in range(PROVEN_AFTER):
            policy.observe(task, 0.0)
    redeliveries = Redeliveries(app, settle=settled.append, running_here=list)
    return InlineRunner(app, policy, Threads(), redeliveries, Lifecycle(), settled.append)  # type: ignore[arg-type]


def delivered(name: str, i: int) -> Any:
    props = SimpleNamespace(message_id=f"m{i}", message_type=name, content_type=CONTENT_TYPE, headers=None)
    return SimpleNamespace(
        header=SimpleNamespace(properties=props), body=encode_body((i,), {}), channel=SimpleNamespace(is_closed=False)
    )


def test_inline_work_past_the_burst_budget_waits_for_the_next_loop_pass() -> None:
    # Given a task that takes the whole burst budget
    app = App("inline-burst", broker_url="amqp://guest:guest@localhost:5672/")
    order: list[str] = []

    @app.task(name="long")
    def long(i: int) -> None:
        time.sleep(BURST_S)
        order.append(f"run {i}")

    settled: list[Outcome] = []
    runner = runner_for(app, settled)
    task = app.tasks["long"]

    async def consume() -> None:
        loop = asyncio.get_running_loop()
        # When one of its messages runs inline (at once, settled), and the next one comes in the same pass
        assert runner.run(delivered("long", 0), task) is None
        order.append("after run 0")
        waiting = runner.run(delivered("long", 1), task)
        assert waiting is not None
        loop.call_soon(order.append, "same pass")
        turn = asyncio.ensure_future(waiting)
        await asyncio.sleep(0)
        order.append("run 1 done" if turn.done() else "run 1 waits")
        await asyncio.wait_for(turn, 1.0)

    started = time.monotonic()
    asyncio.run(consume())
    # Then the second waits for the loop's next pass (acks, heartbeats, deliveries flow meanwhile), then runs
    assert order == ["run 0", "after run 0", "same pass", "run 1 waits", "run 1"]
    assert [o.message.header.properties.message_id for o in settled] == ["m0", "m1"]
    assert all(o.ok for o in settled) and time.monotonic() - started < 1.0


def test_an_inline_task_runs_as_in_a_thread_with_no_event_loop_running() -> None:
    # Given a sync task that uses asyncio as a task written for a worker thread may
    app = App("inline-asyncio", broker_url="amqp://guest:guest@localhost:5672/")

    async def double(i: int) -> int:
        await asyncio.sleep(0)
        return 2 * i

    @app.task(name="uses_asyncio")
    def uses_asyncio(i: int) -> list[Any]:
        seen: list[Any] = [asyncio.run(double(i))]  # fails inside a running loop
        try:
            asyncio.get_running_loop()
            seen.append("get_running_loop returned a loop")
        except RuntimeError:
            seen.append("get_running_loop raised")
        return seen

    settled: list[Outcome] = []
    runner = runner_for(app, settled)

    async def consume() -> bool:
        loop = asyncio.get_running_loop()
        assert runner.run(delivered("uses_asyncio", 21), app.tasks["uses_asyncio"]) is None  # when it runs inline
        return asyncio.get_running_loop() is loop

    # Then asyncio.run() worked in it, and it saw no running loop, as in a thread; the worker's loop is back after it
    assert asyncio.run(consume())
    [outcome] = settled
    assert outcome.ok, outcome.traceback
    assert outcome.value == [42, "get_running_loop raised"]


def behind_a_busy_thread(
    end: Callable[[list[asyncio.Future[Any]], BusyThreads], Awaitable[None]],
) -> tuple[list[Any], list[int], list[Outcome]]:
    """Two proven-short messages wait behind a busy task thread; the first is shed, then `end` ends the waits.

    Returns what the shed took, what ran, and what was settled.
    """
    app = App("inline-behind", broker_url="amqp://guest:guest@localhost:5672/")
    ran: list[int] = []

    @app.task(name="short")
    def short(i: int) -> None:
        ran.append(i)

    settled: list[Outcome] = []
    runner = runner_for(app, settled)
    busy = BusyThreads()
    runner._threads = busy  # type: ignore[assignment]
    task = app.tasks["short"]

    async def consume() -> list[Any]:
        waiting = [asyncio.ensure_future(runner.run(delivered("short", i), task)) for i in (1, 2)]  # type: ignore[arg-type]
        await asyncio.sleep(0)
        taken = runner.shed(lambda m: m.header.properties.message_id == "m1")  # the second is a redelivery: kept
        await end(waiting, busy)
        return taken

    return asyncio.run(consume()), ran, settled


class BusyThreads(Threads):
    """Threads with one task running until `finish()`."""

    def __init__(self) -> None:
        self.pending = 1
        self.idle = asyncio.Event()

    def finish(self) -> None:
        self.pending = 0
        self.idle.set()


def test_messages_waiting_for_the_thread_can_be_handed_back_and_are_then_never_run() -> None:
    # Given the thread busy with a long task, two proven-short messages waiting behind it, the first shed
    async def thread_done(waiting: list[asyncio.Future[Any]], busy: BusyThreads) -> None:
        busy.finish()  # When the thread is free
        await asyncio.wait_for(asyncio.gather(*waiting), 1.0)

    taken, ran, settled = behind_a_busy_thread(thread_done)
    # Then the shed one is taken (to be handed back) and never runs; the other runs
    assert [m.header.properties.message_id for m in taken] == ["m1"]
    assert ran == [2] and [o.message.header.properties.message_id for o in settled] == ["m2"]


def test_a_message_waiting_for_the_thread_whose_wait_is_cancelled_is_settled_as_handed_back_once() -> None:
    # Given the thread busy, two proven-short messages waiting behind it, the first shed
    async def channel_closed(waiting: list[asyncio.Future[Any]], busy: BusyThreads) -> None:
        for w in waiting:  # When both waits are cancelled, as aiormq cancels a closing channel's callbacks
            w.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)

    taken, ran, settled = behind_a_busy_thread(channel_closed)
    # Then neither runs; the one still waiting is settled as handed back, the shed one is not settled twice
    assert ran == [] and [m.header.properties.message_id for m in taken] == ["m1"]
    assert [(o.message.header.properties.message_id, o.reason) for o in settled] == [("m2", Reason.HANDED_BACK)]
