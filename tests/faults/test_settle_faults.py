"""Faults around settling: a copy whose fate is unknown, and a publish whose confirm never came back.

A worker must never both run a task and dead-letter it: a retry's copy that the broker could not
confirm in time (a memory alarm blocks the publishing connection) is waited for, or sent again with
the same id, or the original goes back to its queue. A publisher that re-sends a message after its
connection closed before the confirm marks the copy (`rt-resent`): the task can tell it, and a task
with `dedupe_s` runs only one of the two.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from rabbittask.testing import RabbitNode
from rabbittask.topology import dlq_name
from tests.amqp import depth
from tests.apps.retries_app import make_app
from tests.faults.helpers import APP, finish, ledger_app
from tests.faults.ledger import Ledger, Report, report_line
from tests.proxy import proxy_thread
from tests.retries import APP as RETRIES_APP
from tests.retries import runs
from tests.waiting import assert_stays, wait_until

pytestmark = pytest.mark.faults


def test_a_memory_alarm_while_tasks_retry_dead_letters_none_of_those_that_succeed(
    rabbit_node: RabbitNode, worker_factory, tmp_path: Path
) -> None:
    # Given 100 tasks that fail twice and then succeed, retried 0.5 s and 1 s later, with a 1 s publish timeout
    prefix, exchange, count = "rt-alarm-retry", "rt-alarm-retry-x", 100
    app = make_app(prefix, exchange, rabbit_node.url)
    with app.batch():
        for i in range(count):
            app.tasks["retries.flaky"].delay(f"t{i}", 2)
    app.close()
    # When the broker raises a memory alarm as they start, and keeps it 5 s: their retry copies are published
    # into a blocked connection, far past the publish timeout
    rabbit_node.ctl("set_vm_memory_high_watermark", "0")
    env = {"RT_TEST_EXCHANGE": exchange, "RABBITTASK_PUBLISH_TIMEOUT_S": "1"}
    w = worker_factory(RETRIES_APP, "-c", "2", prefix=prefix, broker_url=rabbit_node.url, env=env)
    # (a worker holds what it prefetched unacked meanwhile: its copies wait, so it takes no more)
    wait_until(lambda: "waits up to" in w.log_path.read_text(), 30, "retry copies wait for the alarm to clear")
    time.sleep(5)
    rabbit_node.ctl("set_vm_memory_high_watermark", "0.4")
    # Then every task runs to success and none of them is in the dead-letter queue
    wait_until(
        lambda: (
            {tag for tag, attempt, _ in runs(tmp_path, prefix, "flaky") if attempt == 3}
            == {f"t{i}" for i in range(count)}
        ),
        60,
        "every task succeeded on its third attempt",
    )
    assert_stays(lambda: depth(rabbit_node.url, dlq_name(f"{prefix}.main")) == 0, 2.0, "an empty dead-letter queue")
    log = w.log_path.read_text()
    waited = log.count("waits up to")
    resent = log.count("re-sending it with the same id")
    third = sum(1 for _, attempt, _ in runs(tmp_path, prefix, "flaky") if attempt == 3)
    report_line(
        f"[ledger] memory alarm 5 s during retries (publish timeout 1 s): {count} fail-twice tasks, {count} succeeded, "
        f"0 in the DLQ; copies that waited out the alarm: {waited}, re-sent: {resent}, third runs: {third}"
    )
    assert "could not publish its copy" not in log


def test_a_publish_re_sent_after_its_connection_closed_is_flagged_and_runs_once_with_dedupe(
    worker_fault_node: RabbitNode,
    worker_factory,
    ledger: Ledger,
    ledger_env: dict[str, str],
    unique_name: str,
    record_report: list[Report],
) -> None:
    node = worker_fault_node
    queue = f"{unique_name}.work"
    with proxy_thread(node.url) as proxy:
        # Given a sync publisher whose connection is open (a re-send happens only on a connection that was)
        app = ledger_app(proxy.url(node.url), unique_name)
        app.tasks["ledger.work"].apply_async(("warm-up",), message_id="warm-up")
        ledger.confirmed.add("warm-up")
        for name, key in (("ledger.work", "plain"), ("ledger.once", "deduped")):
            # When the broker takes the publish but its confirm never comes back, and the connection closes
            proxy.drop_to_client = True
            enqueued = depth(node.url, queue) + 1

            def cut() -> None:
                wait_until(lambda: depth(node.url, queue) >= enqueued, 2.5, "the publish is on the queue")  # noqa: B023
                proxy.drop_to_client = False
                proxy.cut_from_thread()

            cutter = threading.Thread(target=cut)
            cutter.start()
            app.tasks[name].apply_async((key,), message_id=key)  # returns once the re-sent copy is confirmed
            cutter.join()
            ledger.confirmed.add(key)
        app.close()
    # Then both copies of each are on the queue: the publisher re-sent them on a new connection
    assert depth(node.url, queue) == 5
    worker_factory(APP, broker_url=node.url, env=ledger_env)
    plain = wait_until(
        lambda: r if len(r := [x for x in ledger.runs() if x.key == "plain"]) == 2 else None, 30, "2 runs"
    )
    # the plain task runs both, and the second knows it is the re-sent copy; the dedupe_s task runs once
    assert [run.resent for run in plain] == [False, True]
    ledger.wait_executed({"deduped", "warm-up"}, 30)
    assert_stays(lambda: sum(run.key == "deduped" for run in ledger.runs()) == 1, 2.0, "the duplicate is not run")
    report = finish(ledger, "publisher re-send after a lost confirm", record_report)
    assert report.duplicates == 1 and report.resent == 1 and report.unexplained == []
