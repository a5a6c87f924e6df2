"""A worker's connection silently cut, and a worker starved of CPU: heartbeats tell the truth (scenarios 12, 21)."""

from __future__ import annotations

import shutil
import subprocess
import time
from typing import Any

import pytest

from rabbittask import App
from rabbittask.testing import RabbitNode
from tests import amqp
from tests.faults.helpers import APP, finish, publish
from tests.faults.ledger import Ledger, Report
from tests.proxy import proxy_thread
from tests.waiting import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(90)]


@pytest.fixture
def node(worker_fault_node: RabbitNode) -> RabbitNode:
    return worker_fault_node


def consumers(node: RabbitNode, queue: str) -> list[tuple[str, int]]:
    """(channel pid, prefetch count) of each consumer on `queue`, as the broker sees them."""
    out = node.ctl("list_consumers", "queue_name", "channel_pid", "prefetch_count", "--no-table-headers", "-q")
    rows = [line.split("\t") for line in out.splitlines() if line.strip()]
    return [(row[1], int(row[2])) for row in rows if row[0] == queue]


def test_a_black_holed_worker_connection_is_detected_and_consuming_resumes_with_its_qos(
    app: App,
    node: RabbitNode,
    ledger: Ledger,
    ledger_env: dict[str, str],
    worker_factory: Any,
    record_report: list[Report],
) -> None:
    queue = app.tasks["ledger.work"].queue
    heartbeat_s = 2  # ledger_env's
    with proxy_thread(node.url) as proxy:
        # Given a worker whose only way to the broker is a proxy, with a backlog to work on
        w = worker_factory(APP, "--prefetch", "25", env=ledger_env, broker_url=proxy.url(node.url))
        w.wait_for_log("consuming from")
        (before,) = consumers(node, queue)
        publish(app, ledger, 400, sleep_s=0.02)
        wait_until(lambda: len(ledger.ends()) >= 50, 20, "50 tasks done")
        # When the path drops every byte both ways, closing nothing, for 3 heartbeats
        proxy.black_hole = True
        cut_at = time.monotonic()
        w.wait_for_log("broker connection lost", timeout_s=3 * heartbeat_s + 2)
        detected_s = time.monotonic() - cut_at
        time.sleep(max(0.0, 3 * heartbeat_s - (time.monotonic() - cut_at)))
        proxy.black_hole = False
        healed_at = time.time()
        # Then the worker reconnects and consumes again with the same prefetch, and nothing is lost
        w.wait_for_log("consuming from", count=2, timeout_s=20)
        report = finish(
            ledger, f"black-holed worker connection (detected after {detected_s:.1f} s)", record_report, healed_at
        )
        assert detected_s < 2 * heartbeat_s + 2
        ((channel, prefetch),) = consumers(node, queue)  # the cut connection's consumer is gone
        assert channel != before[0] and prefetch == before[1] == 25
        assert report.duplicates == report.redelivered
        assert w.proc.poll() is None and "Traceback" not in w.log()
        amqp.wait_depth(node.url, queue, 0)


@pytest.mark.skipif(shutil.which("stress-ng") is None, reason="needs stress-ng (scripts/bootstrap.sh installs it)")
def test_cpu_bound_tasks_under_cpu_stress_keep_their_heartbeats_and_are_never_redelivered(
    app: App,
    node: RabbitNode,
    ledger: Ledger,
    ledger_env: dict[str, str],
    worker_factory: Any,
    record_report: list[Report],
) -> None:
    env = {**ledger_env, "RABBITTASK_HEARTBEAT_S": "5"}
    log_start = node.log_file.stat().st_size  # the node serves the whole module: read what this test adds
    w = worker_factory(APP, "-c", "2", "--prefetch", "4", env=env, broker_url=node.url)
    w.wait_for_log("consuming from", count=2)
    # Given both cores kept busy by stress-ng for 20 s
    stress = subprocess.Popen(
        ["stress-ng", "--cpu", "2", "--timeout", "20s", "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        # When the worker runs pure-Python CPU-bound tasks (0.5 s of CPU each, holding the GIL) meanwhile
        publish(app, ledger, 24, cpu_s=0.5)
        report = finish(ledger, "CPU-bound tasks under stress-ng --cpu 2, 5 s heartbeat", record_report, timeout_s=40)
    finally:
        stress.terminate()
        stress.wait(10)
    # Then no connection was lost on either side, and nothing ran twice or came back redelivered
    assert "connection lost" not in w.log() and "reconnecting" not in w.log()
    with open(node.log_file, errors="replace") as f:
        f.seek(log_start)
        node_log = f.read()
    assert "missed heartbeats" not in node_log
    assert report.duplicates == 0 and not any(run.redelivered for run in ledger.runs())
