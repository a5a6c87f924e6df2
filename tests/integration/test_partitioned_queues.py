"""Partitioned queues on a real broker: per-key order across workers, retries in place, fairness, topology."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from rabbittask import App
from rabbittask.partitions import partition_exchange_name, partition_queue_name
from tests import amqp
from tests.ordering import done, order_violations, records, repeats
from tests.waiting import wait_until
from tests.workers import ROOT

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


def ordered_app_with(partitions: int, monkeypatch: pytest.MonkeyPatch) -> App:
    """The test app as a new deploy with `partitions` partitions on its ordered queue would build it."""
    monkeypatch.setenv("RT_PARTITIONS", str(partitions))
    sys.modules.pop("tests.apps.ordered_app", None)
    from tests.apps.ordered_app import app

    return app


def queue_exists(url: str, name: str) -> bool:
    with amqp.connect(url) as connection:
        try:
            connection.channel().queue_declare(name, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            return False
        return True


def shrink_cli(app: App) -> subprocess.CompletedProcess[str]:
    """`rabbittask topology shrink -A tests.apps.ordered_app:app`, as an operator runs it."""
    env = {**os.environ, "RT_PARTITIONS": str(app.queues[app.tasks["ordered.apply"].queue].partitions)}
    cmd = [sys.executable, "-m", "rabbittask", "topology", "shrink", "-A", APP]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_repartitioning_by_the_documented_procedure_loses_nothing_and_keeps_order(
    prefix: str, ledger: Path, broker_url: str, worker_factory: Any, monkeypatch: pytest.MonkeyPatch, amqp_cleanup: Any
) -> None:
    monkeypatch.setenv("RT_TEST_PREFIX", prefix)
    monkeypatch.setenv("RABBITTASK_BROKER_URL", broker_url)
    queue = f"{prefix}.orders"
    for i in range(8, 12):
        amqp_cleanup.queue(partition_queue_name(queue, i))
    keys = [f"r{i}" for i in range(12)]
    # Given 8 partitions holding 10 tasks of each of 12 keys
    v1 = ordered_app_with(8, monkeypatch)
    with v1.batch():
        for seq in range(10):
            for key in keys:
                v1.tasks["ordered.apply"].delay(key, seq)
    v1.close()
    # When growing to 12 partitions while they are still queued (the online way: nothing is lost)
    v2 = ordered_app_with(12, monkeypatch)
    w = worker_factory(APP, "-c", "2", prefix=prefix, env={"RT_PARTITIONS": "12"})
    w.wait_ready(children=2)
    with v2.batch():
        for seq in range(10, 20):
            for key in keys:
                v2.tasks["ordered.apply"].delay(key, seq)
    wait_until(lambda: done(ledger, dict.fromkeys(keys, 20)), 60, "every task of both deploys ran")
    v2.close()
    assert len({(r["key"], r["seq"]) for r in records(ledger)}) == 240
    # And shrinking back to 8 with `rabbittask topology shrink`
    extra = [partition_queue_name(queue, i) for i in range(8, 12)]
    v3 = ordered_app_with(8, monkeypatch)
    # While a worker of the 12-partition deploy runs, shrinking is refused, changing nothing
    refused = shrink_cli(v3)
    assert refused.returncode == 2 and "is still consumed" in refused.stderr and "stop them" in refused.stderr
    w.stop()
    # The extra partitions hold tasks sent before the change: the shrink moves them into the current 8
    stray = v2.tasks["ordered.apply"].message(("stray", 0))
    with amqp.connect(broker_url) as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        for name in extra:
            channel.basic_publish(
                "",
                name,
                stray.body,
                pika.BasicProperties(
                    type=stray.task_name, message_id=name, content_type="application/json", headers=stray.headers
                ),
            )
    done_shrink = shrink_cli(v3)
    assert done_shrink.returncode == 0, done_shrink.stderr
    assert "4 partition(s) retired" in done_shrink.stdout
    assert all(f"{name}: moved 1 message(s)" in done_shrink.stdout for name in extra), done_shrink.stdout
    assert [queue_exists(broker_url, name) for name in extra] == [False] * 4
    worker_factory(APP, "-c", "2", prefix=prefix, env={"RT_PARTITIONS": "8"}).wait_ready(children=2)
    with v3.batch():
        for seq in range(20, 30):
            for key in keys:
                v3.tasks["ordered.apply"].delay(key, seq)
    v3.close()
    # Then every task of the three deploys ran; each deploy's tasks ran in order (a key that moved when
    # growing may have run its new tasks beside its old ones: the documented caveat), and after the
    # drain-first shrink every key's tasks ran after all its earlier ones
    wait_until(lambda: done(ledger, dict.fromkeys(keys, 30)), 60, "every task of the third deploy ran")
    wait_until(lambda: len([r for r in records(ledger) if r["key"] == "stray"]) == 4, 30, "the 4 moved tasks ran")
    runs = [r for r in records(ledger) if r["key"] != "stray"]
    assert len({(r["key"], r["seq"]) for r in runs}) == 360
    for first in (0, 10, 20):
        deploy = [{**r, "seq": r["seq"] - first} for r in runs if first <= r["seq"] < first + 10]
        assert order_violations(deploy) == []
    last_before = max(r["t"] for r in runs if r["seq"] < 20)
    assert all(r["t"] > last_before for r in runs if r["seq"] >= 20)


def test_status_shows_each_partition_and_the_child_active_on_it(
    app: App, prefix: str, ledger: Path, worker_factory: Any
) -> None:
    # Given a worker of two children that ran tasks of 20 keys (so most partitions delivered to their active child)
    w = worker_factory(APP, "-c", "2", "-Q", f"{prefix}.orders", prefix=prefix)
    w.wait_ready(children=2)
    children = w.wait_for_children(2)
    keys = [f"s{i}" for i in range(20)]
    with app.batch():
        for key in keys:
            app.tasks["ordered.apply"].delay(key, 0)
    wait_until(lambda: done(ledger, dict.fromkeys(keys, 1)), 30, "the 20 tasks ran")
    env = {**os.environ, "RT_TEST_PREFIX": prefix}
    cmd = [sys.executable, "-m", "rabbittask", "status", "--json", "-A", APP]

    # When `status --json` runs (until it hears heartbeats sent after the runs)
    def partitions() -> list[dict[str, Any]] | None:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
        [orders] = [q for q in json.loads(out.stdout)["queues"] if q["name"] == f"{prefix}.orders"]
        rows: list[dict[str, Any]] = orders["partitions"]
        return rows if sum(1 for r in rows if r["active"]) >= 4 else None

    rows = wait_until(partitions, 30, "status names the active child of partitions", interval_s=0.5)
    # Then each partition is listed with its consumers (as the broker counts them) and,
    # where it delivered, the child active on it; the partitions are spread over both children
    assert [r["name"] for r in rows] == [partition_queue_name(f"{prefix}.orders", i) for i in range(8)]
    assert all(r["ready"] == 0 and r["consumers"] >= 1 for r in rows), rows
    active = {int(r["active"].rsplit(":", 1)[1]) for r in rows if r["active"]}
    assert active <= set(children) and len(active) == 2
