"""The adaptive prefetch policy (rabbittask/worker/prefetch.py): when it grows, steps down, sheds and resumes."""

from __future__ import annotations

import asyncio
import time

from rabbittask import App
from rabbittask.worker.prefetch import CEILING, HOLD_S, LONG_S, STALLED, TICK_S, AdaptivePrefetch, adaptive_allowed


class Consumer:
    """What the policy drives: the session's resize, the child's shed, the threads' stall."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.waiting = 0
        self.stalled_at: float | None = None

    def shed(self) -> int:
        handed, self.waiting = self.waiting, 0
        return handed

    def policy(self, floor: int = 16) -> AdaptivePrefetch:
        return AdaptivePrefetch(floor, resize=self.sizes.append, shed=self.shed, stalled_since=lambda: self.stalled_at)


def settle(policy: AdaptivePrefetch, runs: int, runtime_s: float) -> None:
    for _ in range(runs):
        policy.observe(runtime_s)


def test_the_prefetch_grows_x4_per_window_of_short_tasks_up_to_the_ceiling() -> None:
    consumer = Consumer()
    policy = consumer.policy()
    settle(policy, 15, 0.00001)
    assert consumer.sizes == []  # a window is `level` tasks
    settle(policy, 1, 0.00001)
    assert consumer.sizes == [64]
    settle(policy, 64 + 256, 0.00001)
    assert consumer.sizes == [64, 256, CEILING]
    settle(policy, 5 * CEILING, 0.00001)
    assert consumer.sizes == [64, 256, CEILING]  # it stays there


def test_the_prefetch_grows_only_while_a_full_buffer_holds_little_work() -> None:
    consumer = Consumer()
    policy = consumer.policy()
    runtime_s = HOLD_S / 100  # 1 ms: 64 of them hold 64 ms, 256 would hold 256 ms
    settle(policy, 16 + 64 + 256, runtime_s)
    assert consumer.sizes == [64]


def test_the_prefetch_steps_down_when_tasks_get_longer() -> None:
    consumer = Consumer()
    policy = consumer.policy()
    settle(policy, 16 + 64 + 256, 0.00001)
    assert policy.level == CEILING
    settle(policy, CEILING, HOLD_S)  # a window of 0.1 s tasks: a full buffer would hold 100 s
    assert consumer.sizes[-1] == 256


def test_a_long_task_holding_every_thread_sheds_the_buffer_and_stops_consuming_until_a_task_settles() -> None:
    consumer = Consumer()

    async def main() -> AdaptivePrefetch:
        policy = consumer.policy()
        policy.start()
        settle(policy, 16, 0.00001)
        assert policy.level == 64
        # Given a task that started long ago on the only thread, with 40 messages waiting behind it
        consumer.waiting, consumer.stalled_at = 40, time.monotonic() - LONG_S
        await asyncio.sleep(TICK_S * 3)
        policy.close()
        return policy

    policy = asyncio.run(main())
    # Then it handed them back and stopped consuming (once: a stalled child has nothing more to shed)
    assert consumer.waiting == 0 and policy.sheds == 1
    assert consumer.sizes == [64, STALLED]
    # When the long task settles, it consumes again at 1, and grows from there
    policy.observe(5.0)
    assert consumer.sizes[-1] == 1
    settle(policy, 1, 0.00001)
    assert consumer.sizes[-1] == 4


def test_a_busy_child_with_a_free_thread_never_sheds() -> None:
    consumer = Consumer()

    async def main() -> AdaptivePrefetch:
        policy = consumer.policy()
        policy.start()
        settle(policy, 16, 0.00001)
        consumer.waiting = 40  # stalled_since() says None: a thread is free
        await asyncio.sleep(TICK_S * 3)
        policy.close()
        return policy

    policy = asyncio.run(main())
    assert policy.sheds == 0 and consumer.waiting == 40 and consumer.sizes == [64]


def test_a_pinned_prefetch_a_task_budget_or_a_single_active_consumer_queue_turn_adaptation_off() -> None:
    app = App("adaptive", broker_url="amqp://guest:guest@localhost:5672/")
    app.task(queue="work", name="work")(lambda: None)
    app.task(queue="ordered", name="ordered", single_active_consumer=True)(lambda: None)
    assert adaptive_allowed(app, ["work"], pinned=None, max_tasks=0)
    assert not adaptive_allowed(app, ["work"], pinned=16, max_tasks=0)
    assert not adaptive_allowed(app, ["work"], pinned=None, max_tasks=100)
    assert not adaptive_allowed(app, ["work", "ordered"], pinned=None, max_tasks=0)
    pinned = App("adaptive", broker_url="amqp://guest:guest@localhost:5672/", prefetch=16)
    pinned.task(queue="work", name="work")(lambda: None)
    assert not adaptive_allowed(pinned, ["work"], pinned=None, max_tasks=0)


def test_one_long_task_after_another_runs_at_a_prefetch_of_1_without_re_consuming_each_time() -> None:
    consumer = Consumer()

    async def main() -> AdaptivePrefetch:
        policy = consumer.policy(floor=1)
        policy.start()
        # A long task runs on the only thread and nothing waits behind it: the consumer's one slot is taken
        consumer.stalled_at = time.monotonic() - LONG_S
        await asyncio.sleep(TICK_S * 3)
        policy.observe(1.0)
        policy.close()
        return policy

    policy = asyncio.run(main())
    assert policy.sheds == 0 and consumer.sizes == [] and policy.level == 1
