"""Worker processes killed and stopped under load, through the ledger (scenarios 2-5).

tests/integration/test_process_model.py shows each mechanism on one or a few messages; here the
same faults hit a worker with a backlog, and the ledger checks what ran against what was confirmed.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from rabbittask import App
from rabbittask.testing import RabbitNode
from tests import amqp
from tests.faults.helpers import APP, finish, publish
from tests.faults.ledger import Ledger, Report, Run
from tests.waiting import wait_until
from tests.workers import WorkerProcess, gone

pytestmark = [pytest.mark.faults, pytest.mark.timeout(90)]
DELIVERY_LIMIT = 3


@pytest.fixture
def node(worker_fault_node: RabbitNode) -> RabbitNode:
    return worker_fault_node


@pytest.fixture
def app_settings() -> dict[str, Any]:
    return {"delivery_limit": DELIVERY_LIMIT}


@pytest.fixture
def env(ledger_env: dict[str, str]) -> dict[str, str]:
    return {**ledger_env, "RABBITTASK_DELIVERY_LIMIT": str(DELIVERY_LIMIT)}


def running(ledger: Ledger, pids: list[int]) -> list[Run]:
    """Runs started in one of `pids` that have not ended."""
    return [run for run in ledger.runs() if run.end is None and run.pid in pids]


def start_worker(worker_factory: Any, node: RabbitNode, env: dict[str, str], *args: str, c: int = 2) -> WorkerProcess:
    w: WorkerProcess = worker_factory(APP, "-c", str(c), *args, env=env, broker_url=node.url)
    w.wait_for_log("consuming from", count=c)
    return w


def test_a_child_killed_mid_task_is_back_within_2s_and_its_task_runs_once_more_marked_redelivered(
    app: App, node: RabbitNode, ledger: Ledger, env: dict[str, str], worker_factory: Any, record_report: list[Report]
) -> None:
    w = start_worker(worker_factory, node, env, "--prefetch", "10")
    publish(app, ledger, 400, sleep_s=0.02)
    # Given a child in the middle of a task
    wait_until(lambda: running(ledger, w.children()), 10, "a task running in a child")
    (victim,) = running(ledger, w.children())[:1]
    # When it is killed with SIGKILL
    os.kill(victim.pid, signal.SIGKILL)
    killed_at = time.time()
    # Then a new child consumes within 2 s
    w.wait_for_log("consuming from", count=3, timeout_s=5)
    back_s = time.time() - killed_at
    report = finish(ledger, f"kill -9 a child mid-task (child back in {back_s:.2f} s)", record_report, killed_at)
    assert back_s < 2.0
    # And its task ran once more, in another child, seeing the redelivery
    first, again = [run for run in ledger.runs() if run.key == victim.key]
    assert first.end is None and again.end is not None and again.pid != victim.pid
    assert again.redelivered and again.delivery_count == 2
    assert report.duplicates == report.redelivered  # only what the dead child held ran again
    assert amqp.depth(node.url, f"{app.tasks['ledger.work'].queue}") == 0


def test_a_task_that_kills_its_child_every_time_is_dead_lettered_after_the_delivery_limit(
    app: App, node: RabbitNode, ledger: Ledger, env: dict[str, str], worker_factory: Any, record_report: list[Report]
) -> None:
    queue = app.tasks["ledger.work"].queue
    start_worker(worker_factory, node, env, "--prefetch", "10")
    # Given a poison message among 300 ordinary ones on a quorum queue with delivery_limit 3
    publish(app, ledger, 150, sleep_s=0.01)
    poison = app.tasks["ledger.crash"].apply_async(("poison",), message_id="poison")
    publish(app, ledger, 150, start=150, sleep_s=0.01)
    # Then it is started at most 3 times, then dead-lettered with the reason
    amqp.wait_depth(node.url, f"{queue}.dlq", 1, timeout_s=30)
    report = finish(ledger, f"poison task kills its child (delivery limit {DELIVERY_LIMIT})", record_report)
    poison_runs = [run for run in ledger.runs() if run.key == "poison"]
    assert 1 <= len(poison_runs) <= DELIVERY_LIMIT
    assert [run.delivery_count for run in poison_runs] == list(range(1, len(poison_runs) + 1))
    ((props, _),) = amqp.get_all(node.url, f"{queue}.dlq")
    assert props.message_id == poison.id and props.headers["rt-reason"] == "delivery limit"
    assert f"without being settled (limit {DELIVERY_LIMIT})" in props.headers["rt-exc-message"]
    # And its neighbours all ran: only those the killed children held ran twice, each seeing the redelivery
    assert report.executed == 300 and report.duplicates == report.redelivered
    assert amqp.depth(node.url, queue) == 0


def test_children_of_a_killed_supervisor_are_gone_within_1s_and_all_they_held_is_redelivered(
    app: App, node: RabbitNode, ledger: Ledger, env: dict[str, str], worker_factory: Any, record_report: list[Report]
) -> None:
    queue = app.tasks["ledger.work"].queue
    w = start_worker(worker_factory, node, env, "--prefetch", "2")
    children = w.children()
    # Given two busy children holding 4 messages (2 running, 2 prefetched)
    publish(app, ledger, 4, sleep_s=2.0)
    ledger.wait_runs(2, 10)
    # When the supervisor is killed with SIGKILL
    os.kill(w.pid, signal.SIGKILL)
    killed_at, killed_at_monotonic = time.time(), time.monotonic()
    # Then its children are gone within 1 s and every message they held is back
    wait_until(lambda: gone(children), 1.0, f"children {children} gone", interval_s=0.02)
    gone_s = time.monotonic() - killed_at_monotonic
    amqp.wait_depth(node.url, queue, 4, timeout_s=10)
    start_worker(worker_factory, node, env, "--prefetch", "1", c=4)
    report = finish(ledger, f"kill -9 the supervisor (children gone in {gone_s:.2f} s)", record_report, killed_at)
    rerun = [run for run in ledger.runs() if run.pid not in children]
    assert len(rerun) == 4 and all(run.redelivered for run in rerun)
    assert report.duplicates == 2 == report.redelivered  # the two that were running ran again


def test_sigterm_under_load_finishes_or_returns_in_flight_work_within_the_grace_period_and_flushes_acks(
    app: App, node: RabbitNode, ledger: Ledger, env: dict[str, str], worker_factory: Any, record_report: list[Report]
) -> None:
    queue = app.tasks["ledger.work"].queue
    grace_s = 2.0
    w = start_worker(worker_factory, node, env, "--prefetch", "20", "--shutdown-timeout", str(grace_s))
    # Given a backlog of short tasks and one that outlasts the grace period
    app.tasks["ledger.work"].apply_async(("long",), {"sleep_s": 10.0}, message_id="long")
    ledger.confirmed.add("long")
    publish(app, ledger, 1500, sleep_s=0.005)
    wait_until(lambda: len(ledger.ends()) >= 300, 20, "300 tasks done")
    # When the supervisor gets SIGTERM under load
    started = time.monotonic()
    w.signal(signal.SIGTERM)
    # Then it exits 0 within the grace period (plus the time to close connections)
    assert w.proc.wait(grace_s + 5) == 0
    took_s = time.monotonic() - started
    # And every task that ended was acked, every other one is back in the queue: acks were flushed
    done = ledger.ends()
    assert "long" not in done
    amqp.wait_depth(node.url, queue, len(ledger.confirmed) - len(done), timeout_s=10)
    assert all(n == 1 for n in done.values())
    stopped_at = time.time()
    start_worker(worker_factory, node, env, "--prefetch", "20")
    report = finish(ledger, f"SIGTERM under load (exit after {took_s:.2f} s)", record_report, stopped_at)
    assert took_s < grace_s + 3.0, took_s
    # Only the task cut off at the grace period ran again, seeing the redelivery
    assert report.duplicates == report.redelivered == 1
    assert [run.redelivered for run in ledger.runs() if run.key == "long"] == [False, True]
