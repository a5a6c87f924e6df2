"""Adaptive prefetch against a real broker and real workers: it grows on short tasks, sheds behind a long one.

The prefetch is read from the broker (`rabbitmqctl list_consumers` on a node of their own), never from timing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rabbittask import App
from rabbittask.testing import RabbitNode
from rabbittask.worker import prefetch
from rabbittask.worker.child import Child
from rabbittask.worker.prefetch import CEILING
from tests import amqp
from tests.apps.prefetch_app import make_app
from tests.conftest import _need_rabbitmq_binary
from tests.waiting import wait_until

APP = "tests.apps.prefetch_app:app"


@pytest.fixture(scope="module")
def node() -> Iterator[RabbitNode]:
    """A node of these tests' own, so `rabbitmqctl list_consumers` can ask it what each consumer's prefetch is."""
    _need_rabbitmq_binary()
    with RabbitNode() as node:
        yield node


@pytest.fixture
def broker_url(node: RabbitNode) -> str:
    return node.url


@pytest.fixture
def prefix(unique_name: str) -> str:
    return unique_name


@pytest.fixture
def app(prefix: str, broker_url: str) -> Iterator[App]:
    app = make_app(prefix, broker_url)
    app.declare()
    yield app
    app.close()


def consumer_prefetches(node: RabbitNode, queue: str) -> list[int]:
    """The prefetch of each consumer the broker has on `queue`."""
    out = node.ctl("list_consumers", "queue_name", "prefetch_count", "--no-table-headers", "-q")
    return [int(fields[1]) for line in out.splitlines() if (fields := line.split()) and fields[0] == queue]


def notes(tmp_path: Path, prefix: str) -> list[str]:
    path = tmp_path / prefix
    return path.read_text().splitlines() if path.exists() else []


def test_the_prefetch_grows_while_tasks_prove_short(
    app: App, prefix: str, broker_url: str, node: RabbitNode, worker_factory
) -> None:
    # Given a worker with no prefetch flag, consuming at the app's prefetch
    w = worker_factory(APP, "-c", "1", prefix=prefix, broker_url=broker_url)
    w.wait_for_log("consuming from")
    queue = f"{prefix}.work"
    assert consumer_prefetches(node, queue) == [app.settings.prefetch]
    # When a backlog of short tasks drains
    short = app.tasks["prefetch.short"]
    with app.batch():
        for _ in range(2000):
            short.delay(-1)
    amqp.wait_depth(broker_url, queue, 0, timeout_s=60)
    # Then the broker holds one consumer for the child, at the ceiling
    wait_until(lambda: consumer_prefetches(node, queue) == [CEILING], 30, "the prefetch never reached the ceiling")
    assert f"prefetch 256 -> {CEILING}" in w.log()


def test_a_pinned_prefetch_never_changes(
    app: App, prefix: str, broker_url: str, node: RabbitNode, worker_factory
) -> None:
    w = worker_factory(APP, "-c", "1", "--prefetch", "20", prefix=prefix, broker_url=broker_url)
    w.wait_for_log("consuming from")
    short = app.tasks["prefetch.short"]
    with app.batch():
        for _ in range(1000):
            short.delay(-1)
    amqp.wait_depth(broker_url, f"{prefix}.work", 0, timeout_s=60)
    assert consumer_prefetches(node, f"{prefix}.work") == [20]
    assert "prefetch 20 ->" not in w.log()


@pytest.mark.xfail(
    reason="open: a few short tasks can still wait behind the long one (seen in CI: 594 of 600 ran)", strict=False
)
def test_short_tasks_do_not_wait_behind_a_long_one_prefetched_with_them(
    app: App, prefix: str, broker_url: str, node: RabbitNode, tmp_path: Path, worker_factory
) -> None:
    # Given two children whose prefetch grew on short tasks
    w = worker_factory(APP, "-c", "2", prefix=prefix, broker_url=broker_url)
    w.wait_for_log("consuming from", count=2)
    short, long = app.tasks["prefetch.short"], app.tasks["prefetch.long"]
    queue = f"{prefix}.work"
    with app.batch():
        for _ in range(4000):
            short.delay(-1)
    wait_until(lambda: consumer_prefetches(node, queue) == [CEILING, CEILING], 60, "the prefetch never grew")
    # When a long task is sent, then short ones behind it: one child prefetches some of them with the long one
    release = tmp_path / "release-long"
    try:
        with app.batch():
            long.delay(str(release))
            for i in range(600):
                short.delay(i)
        # Then every short task runs while the long one still runs (on the other child, or after a hand-back)
        wait_until(
            lambda: sum(1 for n in notes(tmp_path, prefix) if n.startswith("short ")) >= 600,
            20,
            lambda: f"short tasks stuck behind the long one: {len(notes(tmp_path, prefix))} notes",
        )
        assert "long done" not in notes(tmp_path, prefix)
        assert "long started" in "\n".join(notes(tmp_path, prefix))
    finally:
        release.touch()
    wait_until(lambda: "long done" in notes(tmp_path, prefix), 30, "the long task never finished")
    # And the child that ran it dropped its prefetch to 1 meanwhile, handing back what waited
    assert "a task runs longer than" in w.log()
    amqp.wait_depth(broker_url, queue, 0)


def test_every_task_runs_exactly_once_while_the_child_sheds_again_and_again(
    broker_url: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a child that sheds whenever a task runs 10 ms (every 50th does), so hand-backs and acks interleave
    monkeypatch.setattr(prefetch, "LONG_S", 0.01)
    monkeypatch.setattr(prefetch, "TICK_S", 0.01)
    app = App("shed", broker_url=broker_url, exchange=f"{unique_name}.x", events=False)
    ran: list[int] = []
    n = 2000

    def work(i: int) -> None:
        ran.append(i)
        if i % 50 == 0:
            time.sleep(0.02)
        if len(set(ran)) == n:
            child.lifecycle.signal()

    task = app.task(queue=unique_name, name="shed.work")(work)
    app.declare()
    with app.batch():
        for i in range(n):
            task.delay(i)
    child = Child(app, [unique_name], inline_max_s=0)

    async def run() -> int:
        return await asyncio.wait_for(child.run(), 90)

    # When it drains them
    assert asyncio.run(run()) == 0
    app.close()
    # Then it did shed, every task ran once, nothing is left, and the channel never closed on a bad tag
    assert child.adaptive is not None and child.adaptive.sheds >= 5
    assert sorted(ran) == list(range(n))
    assert child.session.reconnects == 0
    amqp.wait_depth(broker_url, unique_name, 0)
