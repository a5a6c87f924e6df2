"""A task longer than the broker's consumer_timeout, on a node where it is 5 s (scenario 15).

RabbitMQ 3.10 checks delivery timeouts on each channel's tick, every `channel_tick_interval` ms
(60,000 by default, an application setting that rabbitmq.conf does not take), so a 5 s timeout
would fire up to a minute late: the node gets a 1 s tick through `rabbitmqctl eval`, which channels
opened afterwards use.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest

from rabbittask.testing import RabbitNode
from tests import amqp
from tests.faults.helpers import APP, finish, ledger_app, publish
from tests.faults.ledger import Ledger, Report, report_line
from tests.workers import ROOT, worker_env

pytestmark = [pytest.mark.faults, pytest.mark.timeout(90)]
TIMEOUT_S = 5


@pytest.fixture
def node(rabbit_node_factory: Any) -> RabbitNode:
    node: RabbitNode = rabbit_node_factory([f"consumer_timeout = {TIMEOUT_S * 1000}"])
    node.ctl("eval", "application:set_env(rabbit, channel_tick_interval, 1000).")
    return node


def test_a_task_longer_than_consumer_timeout_is_handled_and_the_worker_survives(
    node: RabbitNode,
    unique_name: str,
    ledger: Ledger,
    ledger_env: dict[str, str],
    worker_factory: Any,
    record_report: list[Report],
) -> None:
    env = {**ledger_env, "RT_TIME_LIMIT_S": "30"}  # ledger.work may run 30 s: longer than the node allows
    timeout_args = ["--consumer-timeout", str(TIMEOUT_S)]
    # At start-up: --strict-timeouts refuses, saying what to change
    strict = subprocess.run(
        [sys.executable, "-m", "rabbittask", "worker", "-A", APP, *timeout_args, "--strict-timeouts"],
        env=worker_env(node.url, env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert strict.returncode == 78, strict.stderr
    problem = f"task 'ledger.work': time_limit 30 s is not shorter than the broker's consumer_timeout ({TIMEOUT_S} s)"
    assert problem in strict.stderr and "refusing to start (--strict-timeouts)" in strict.stderr
    # Without it the worker warns and starts
    w = worker_factory(APP, "-c", "1", "--prefetch", "1", *timeout_args, env=env, broker_url=node.url)
    w.wait_for_log(problem)
    w.wait_for_log("consuming from")
    app = ledger_app(node.url, unique_name)
    try:
        # When a task runs 8 s, and others wait behind it
        app.tasks["ledger.work"].apply_async(("long",), {"sleep_s": 8.0}, message_id="long")
        ledger.confirmed.add("long")
        publish(app, ledger, 20)
        # Then the broker's 406 closes the channel, the worker explains it and consumes again
        w.wait_for_log("the broker's consumer_timeout closed the channel", timeout_s=TIMEOUT_S + 4)
        closed_at = time.time()
        w.wait_for_log("consuming from", count=2, timeout_s=10)
        publish(app, ledger, 20, start=20)
        report = finish(ledger, f"task longer than a {TIMEOUT_S} s consumer_timeout", record_report, closed_at)
    finally:
        app.close()
    # And the long task ran at most once more (here not at all: its redelivery waited for the first run)
    long_runs = [run for run in ledger.runs() if run.key == "long"]
    assert len(long_runs) <= 2 and report.duplicates == report.redelivered
    report_line(f"[ledger] consumer_timeout: the 8 s task ran {len(long_runs)} time(s)")
    assert w.proc.poll() is None and w.log().count("started child") == 1  # the same child, never restarted
    amqp.wait_depth(node.url, app.tasks["ledger.work"].queue, 0)
