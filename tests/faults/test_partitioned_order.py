"""Per-key order through kill -9 of a partition's active consumer: 20,000 tasks over 200 keys, 2 workers x 2 children.

The ledger (tests/ordering.py) records every run with its key and sequence number. While the workers
drain, the child that ran the latest task (so the active consumer of at least one partition) is killed
with SIGKILL, twice. The broker returns what it held to the head of its partition and hands the
partition to a standby: a task may run again, but no key's tasks ever run out of order, and none is lost.
Also here, as it starts a node of its own: a broker without the consistent-hash plugin.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from rabbittask import App
from rabbittask.errors import TopologyMismatch
from rabbittask.testing import RabbitNode
from tests.ordering import done, order_violations, records, repeats
from tests.waiting import wait_until
from tests.workers import WorkerProcess, gone

pytestmark = [pytest.mark.faults, pytest.mark.timeout(420)]
APP = "tests.apps.ordered_app:app"
TASKS, KEYS = 20_000, 200


@pytest.fixture
def node(worker_fault_node: RabbitNode) -> RabbitNode:
    return worker_fault_node


def active_child(ledger: Path, workers: list[WorkerProcess]) -> int:
    """A child that is the active consumer of a partition now: the one that ran the latest task."""
    children = {pid for w in workers for pid in w.children()}

    def latest() -> int | None:  # the newest run by a live child (the newest runs may all be the killed one's)
        return next((r["pid"] for r in reversed(records(ledger)) if r["pid"] in children), None)

    return wait_until(latest, 30, "a run by a live child")


def test_kill_9_of_active_partition_consumers_never_runs_a_key_out_of_order(
    node: RabbitNode, unique_name: str, tmp_path: Path, worker_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RT_TEST_PREFIX", unique_name)
    monkeypatch.setenv("RABBITTASK_BROKER_URL", node.url)
    sys.modules.pop("tests.apps.ordered_app", None)
    from tests.apps.ordered_app import app

    ledger = tmp_path / unique_name
    env = {"RT_SLEEP_S": "0.001", "RABBITTASK_HEARTBEAT_S": "2"}
    workers = [worker_factory(APP, "-c", "2", prefix=unique_name, broker_url=node.url, env=env) for _ in "ab"]
    for w in workers:
        w.wait_ready(children=2)
    # Given 20,000 tasks over 200 keys, sent in order (seq 0..99 per key, keys interleaved)
    apply = app.tasks["ordered.apply"]
    with app.batch():
        for seq in range(TASKS // KEYS):
            for k in range(KEYS):
                apply.delay(f"k{k}", seq)
    app.close()
    # When the active consumer of a partition is killed with SIGKILL, at a quarter and at 60% of the run
    killed = []
    for share in (0.25, 0.6):
        wait_until(lambda share=share: len(records(ledger)) >= TASKS * share, 240, f"{share:.0%} of the tasks ran")
        victim = active_child(ledger, workers)
        os.kill(victim, signal.SIGKILL)
        killed.append(victim)
        wait_until(lambda victim=victim: gone([victim]), 10, f"child {victim} is gone")
        time.sleep(1)  # the broker's failover, and the supervisor's replacement child
    expected = {f"k{k}": TASKS // KEYS for k in range(KEYS)}
    wait_until(lambda: done(ledger, expected), 300, "every key's last task ran")
    # Then every key's tasks ran in publish order; a repeat is a redelivery of the task a killed child held
    runs = records(ledger)
    assert order_violations(runs) == []
    again = repeats(runs)
    assert all(r["redelivered"] for r in again), again
    assert len({(r["key"], r["seq"]) for r in runs}) == TASKS
    print(f"\n{len(runs)} runs of {TASKS} tasks, {len(again)} repeated after the kills of {killed}")


PLUGIN_HINT = "rabbitmq-plugins enable rabbitmq_consistent_hash_exchange"


def test_without_the_consistent_hash_plugin_publisher_and_worker_say_how_to_enable_it(
    unique_name: str, rabbit_node_factory: Any, worker_factory: Any
) -> None:
    # Given a broker without the consistent-hash exchange plugin
    node = rabbit_node_factory(default_plugins=False)
    app = App("no-plugin", broker_url=node.url)

    @app.task(queue=f"{unique_name}.orders", partition_by="key", partitions=2)
    def apply(key: str) -> None: ...

    # When a producer declares the topology, it is told what to run
    with pytest.raises(TopologyMismatch, match=PLUGIN_HINT.replace(" ", r"\s")):
        app.declare()
    app.close()
    # And a worker stops at start-up (exit 78, no restart loop) saying the same
    w = worker_factory(APP, "-c", "1", prefix=unique_name, broker_url=node.url)
    assert w.proc.wait(60) == 78
    assert PLUGIN_HINT in w.log()
