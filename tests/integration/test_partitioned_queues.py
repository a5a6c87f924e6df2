"""Partitioned queues on a real broker: per-key order across workers, retries in place, fairness, topology."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rabbittask import App
from rabbittask.errors import TopologyMismatch
from rabbittask.partitions import partition_exchange_name, partition_queue_name
from tests import amqp
from tests.ordering import done, order_violations, records, repeats
from tests.waiting import wait_until

APP = "tests.apps.ordered_app:app"
QUEUES = {"orders": 8, "skipping": 2, "reports": 4}


@pytest.fixture
def prefix(unique_name: str, amqp_cleanup: Any) -> str:
    for queue, partitions in QUEUES.items():
        name = f"{unique_name}.{queue}"
        for i in range(partitions):
            amqp_cleanup.queue(partition_queue_name(name, i))
        amqp_cleanup.queue(f"{name}.dlq")
        amqp_cleanup.exchange(partition_exchange_name("rabbittask", name))
    return unique_name


@pytest.fixture
def app(prefix: str, broker_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    """The test app as the test process sees it (same tasks and queues as the worker's)."""
    monkeypatch.setenv("RT_TEST_PREFIX", prefix)
    monkeypatch.setenv("RABBITTASK_BROKER_URL", broker_url)
    sys.modules.pop("tests.apps.ordered_app", None)
    from tests.apps.ordered_app import app

    yield app
    app.close()


@pytest.fixture
def ledger(tmp_path: Path, prefix: str) -> Path:
    return tmp_path / prefix


def key_runs(ledger: Path, key: str) -> list[tuple[int, int]]:
    """(seq, attempt) of each run of `key`, in start order."""
    return [(r["seq"], r["attempt"]) for r in records(ledger) if r["key"] == key]


def test_one_key_lands_in_one_partition_queue_with_single_active_consumer(app: App, broker_url: str) -> None:
    # Given the topology, declared without any worker
    app.declare()
    apply = app.tasks["ordered.apply"]
    queue = apply.queue
    # When ten tasks of one key and ten of another are sent
    with app.batch():
        for seq in range(10):
            apply.delay("alpha", seq)
    depths = [amqp.depth(broker_url, partition_queue_name(queue, i)) for i in range(8)]
    # Then all ten wait in one partition, in a quorum queue with single-active-consumer
    assert sorted(depths) == [0] * 7 + [10]
    with amqp.connect(broker_url) as connection:
        channel = connection.channel()
        arguments = {"x-queue-type": "quorum", "x-single-active-consumer": True}
        index = depths.index(10)
        channel.queue_declare(partition_queue_name(queue, index), durable=True, passive=True)
        # Re-declaring with the same arguments is accepted (a difference would close the channel with 406).
        channel.queue_declare(
            partition_queue_name(queue, index),
            durable=True,
            arguments={**arguments, **_task_queue_arguments(queue)},
        )


def _task_queue_arguments(queue: str) -> dict[str, Any]:
    return {
        "x-dead-letter-exchange": "rabbittask.dlx",
        "x-dead-letter-routing-key": queue,
        "x-delivery-limit": 20,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def test_same_key_tasks_run_in_publish_order_across_two_workers_through_a_kill_9(
    app: App, prefix: str, ledger: Path, worker_factory: Any
) -> None:
    # Given two workers of two children each on the 8 partitions (tests/faults has the 20,000-task version)
    workers = [worker_factory(APP, "-c", "2", prefix=prefix, env={"RT_SLEEP_S": "0.002"}) for _ in "ab"]
    for w in workers:
        w.wait_ready(children=2)
    # When 1,000 tasks over 20 keys are sent, the keys interleaved
    apply = app.tasks["ordered.apply"]
    keys = [f"k{i}" for i in range(20)]
    with app.batch():
        for seq in range(50):
            for key in keys:
                apply.delay(key, seq)
    # And the child that ran the latest task (a partition's active consumer) is killed with SIGKILL
    wait_until(lambda: len(records(ledger)) >= 300, 60, "300 tasks ran")
    children = {pid for w in workers for pid in w.children()}
    victim = next(r["pid"] for r in reversed(records(ledger)) if r["pid"] in children)
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: done(ledger, dict.fromkeys(keys, 50)), 90, "all 1,000 tasks ran")
    # Then each key's tasks ran in publish order (a task the victim held may have run twice), none lost
    runs = records(ledger)
    assert order_violations(runs) == []
    assert len({(r["key"], r["seq"]) for r in runs}) == 1000
    assert all(r["redelivered"] for r in repeats(runs))
    assert len({r["pid"] for r in runs}) >= 2


def test_a_retry_holds_up_the_later_tasks_of_its_key_until_it_succeeds(
    app: App, prefix: str, ledger: Path, worker_factory: Any
) -> None:
    worker_factory(APP, "-c", "1", "--threads", "2", prefix=prefix).wait_ready()
    # Given a task of key K that fails twice, each retry 0.5 s later, and two later tasks of K
    app.tasks["ordered.flaky"].delay("K", 0, 2, 0.5)
    app.tasks["ordered.apply"].delay("K", 1)
    app.tasks["ordered.apply"].delay("K", 2)
    wait_until(lambda: done(ledger, {"K": 3}), 30, "K's three tasks ran")
    # Then the later tasks waited for the third attempt of the first
    assert key_runs(ledger, "K") == [(0, 1), (0, 2), (0, 3), (1, 1), (2, 1)]


def test_a_task_out_of_retries_is_dead_lettered_and_its_key_moves_on(
    app: App, prefix: str, ledger: Path, broker_url: str, worker_factory: Any
) -> None:
    worker_factory(APP, "-c", "1", prefix=prefix).wait_ready()
    app.tasks["ordered.flaky"].delay("D", 0, 99, 0.05)  # max_retries=5: six runs, then the dead-letter queue
    app.tasks["ordered.apply"].delay("D", 1)
    wait_until(lambda: done(ledger, {"D": 2}), 30, "D's second task ran")
    assert key_runs(ledger, "D") == [(0, a) for a in range(1, 7)] + [(1, 1)]
    amqp.wait_depth(broker_url, f"{prefix}.orders.dlq", 1)


def test_with_partition_retry_skip_later_tasks_pass_a_retry(
    app: App, prefix: str, ledger: Path, worker_factory: Any
) -> None:
    worker_factory(APP, "-c", "1", prefix=prefix).wait_ready()
    skipping = app.tasks["ordered.skipping"]
    skipping.delay("S", 0, 1, 1.0)  # fails once; its retry goes through the delay ladder, behind S's others
    skipping.delay("S", 1, 0, 0.0)
    skipping.delay("S", 2, 0, 0.0)
    wait_until(lambda: len(key_runs(ledger, "S")) == 4, 30, "S's four runs")
    assert key_runs(ledger, "S") == [(0, 1), (1, 1), (2, 1), (0, 2)]


def test_a_tenant_backlog_does_not_hold_up_another_tenant_on_a_fair_queue(
    app: App, prefix: str, ledger: Path, broker_url: str, worker_factory: Any
) -> None:
    # Given tenant A's 300 queued reports, and a report of a tenant that hashes to another partition
    app.declare()
    report = app.tasks["ordered.report"]
    with app.batch():
        for n in range(300):
            report.delay("A", n)
    partitions = [partition_queue_name(report.queue, i) for i in range(4)]
    busy = next(q for q in partitions if amqp.depth(broker_url, q) == 300)
    other = None
    for i in range(20):  # the first tenant that does not share A's partition
        report.delay(f"B{i}", 0)
        if amqp.depth(broker_url, busy) == 300:
            other = f"B{i}"
            break
    assert other is not None
    # When one worker child works through them, 20 ms each
    worker_factory(APP, "-c", "1", prefix=prefix, env={"RT_SLEEP_S": "0.02"}).wait_ready()
    wait_until(lambda: any(r["key"] == other for r in records(ledger, "report")), 60, f"{other}'s report ran")
    # Then the other tenant waited for a few of A's reports, not for 300
    before = records(ledger, "report")
    ran_before = [r for r in before[: [r["key"] for r in before].index(other)] if r["key"] == "A"]
    assert len(ran_before) < 30, f"{len(ran_before)} of A's reports ran before {other}'s"


PLUGIN_HINT = "rabbitmq-plugins enable rabbitmq_consistent_hash_exchange"


def test_without_the_consistent_hash_plugin_publisher_and_worker_say_how_to_enable_it(
    prefix: str, rabbit_node_factory: Any, worker_factory: Any
) -> None:
    # Given a broker without the consistent-hash exchange plugin
    node = rabbit_node_factory(default_plugins=False)
    app = App("no-plugin", broker_url=node.url)

    @app.task(queue=f"{prefix}.orders", partition_by="key", partitions=2)
    def apply(key: str) -> None: ...

    # When a producer declares the topology, it is told what to run
    with pytest.raises(TopologyMismatch, match=PLUGIN_HINT.replace(" ", r"\s")):
        app.declare()
    app.close()
    # And a worker stops at start-up (exit 78, no restart loop) saying the same
    w = worker_factory(APP, "-c", "1", prefix=prefix, broker_url=node.url)
    assert w.proc.wait(60) == 78
    assert PLUGIN_HINT in w.log()
