"""Broker faults on throwaway nodes: nothing confirmed is lost, nobody hangs, workers come back."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import pytest

from rabbittask import App, BatchNotConfirmed, PublishError
from rabbittask.testing import RabbitNode
from tests import amqp
from tests.faults.helpers import APP, finish, publish
from tests.faults.ledger import Ledger, Report, report_line

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]


def test_worker_resumes_when_the_broker_closes_its_connection(
    app: App,
    rabbit_node: RabbitNode,
    ledger: Ledger,
    ledger_env: dict[str, Any],
    worker_factory,
    unique_name: str,
    record_report: list[Report],
) -> None:
    w = worker_factory(APP, "--prefetch", "50", env=ledger_env, broker_url=rabbit_node.url)
    w.wait_for_log("consuming from")
    publish(app, ledger, 1000, sleep_s=0.005)  # 5 s of work: rabbitmqctl takes 0.5-3 s to act here
    time.sleep(0.5)
    rabbit_node.close_all_connections()  # tags the worker holds die with its channel
    fault_end = time.time()
    w.wait_for_log("consuming from", count=2, timeout_s=10)
    publish(app, ledger, 100, start=1000)  # and new work after the fault, whenever the backlog ended
    report = finish(ledger, "close_connection on the worker", record_report, fault_end)
    assert report.recovery_s is not None and report.recovery_s < 5
    assert w.proc.poll() is None and "Traceback" not in w.log()
    assert amqp.depth(rabbit_node.url, f"{unique_name}.work") == 0


def test_consumers_come_back_after_stop_app_and_start_app(
    app: App,
    rabbit_node: RabbitNode,
    ledger: Ledger,
    ledger_env: dict[str, Any],
    worker_factory,
    unique_name: str,
    record_report: list[Report],
) -> None:
    w = worker_factory(APP, "--prefetch", "20", env=ledger_env, broker_url=rabbit_node.url)
    w.wait_for_log("consuming from")
    publish(app, ledger, 300, sleep_s=0.01)
    rabbit_node.stop_app()
    time.sleep(2)
    rabbit_node.start_app()
    fault_end = time.time()
    w.wait_for_log("consuming from", count=2, timeout_s=20)
    publish(app, ledger, 100, start=300)
    report = finish(ledger, "stop_app/start_app", record_report, fault_end)
    assert report.recovery_s is not None and report.recovery_s < 15


def test_confirmed_messages_survive_a_broker_crash_and_publishers_fail_fast_meanwhile(
    app: App,
    rabbit_node: RabbitNode,
    ledger: Ledger,
    ledger_env: dict[str, Any],
    worker_factory,
    record_report: list[Report],
) -> None:
    publish(app, ledger, 500)
    rabbit_node.kill()
    # publishers error out within their timeouts, never hang
    work = app.tasks["ledger.work"]
    start = time.monotonic()
    with pytest.raises(PublishError):
        work.delay("during-crash")
    with pytest.raises(PublishError):
        asyncio.run(work.adelay("during-crash-async"))
    assert time.monotonic() - start < 10
    rabbit_node.start()
    fault_end = time.time()
    w = worker_factory(APP, "--prefetch", "100", env=ledger_env, broker_url=rabbit_node.url)
    w.wait_for_log("consuming from", timeout_s=30)
    publish(app, ledger, 100, start=500)  # the publisher's dead connection is replaced
    finish(ledger, "kill -9 broker, restart", record_report, fault_end, allow_duplicates=False)


def test_a_paused_broker_is_detected_and_no_call_blocks_past_its_timeout(
    app: App,
    rabbit_node: RabbitNode,
    ledger: Ledger,
    ledger_env: dict[str, Any],
    worker_factory,
    record_report: list[Report],
) -> None:
    w = worker_factory(APP, "--prefetch", "20", env=ledger_env, broker_url=rabbit_node.url)
    w.wait_for_log("consuming from")
    publish(app, ledger, 100)
    ledger.wait_executed(ledger.confirmed, 30)
    work = app.tasks["ledger.work"]
    rabbit_node.pause()
    paused_at = time.monotonic()
    try:
        # heartbeat 2 s: the worker notices within 2 x heartbeat + 2 s
        w.wait_for_log("broker connection lost", timeout_s=2 * 2 + 2)
        detected_s = time.monotonic() - paused_at
        start = time.monotonic()
        with pytest.raises(PublishError, match="not confirmed|cannot publish|lost the connection"):
            work.apply_async(("paused-sync",), message_id="paused-sync")
        assert time.monotonic() - start < 3 + 2
        start = time.monotonic()
        with pytest.raises(PublishError):
            asyncio.run(work.aapply_async(("paused-async",), message_id="paused-async"))
        assert time.monotonic() - start < 3 + 2
        ledger.failed |= {"paused-sync", "paused-async"}
        time.sleep(max(0.0, 20 - (time.monotonic() - paused_at)))
    finally:
        rabbit_node.resume()
    fault_end = time.time()
    w.wait_for_log("consuming from", count=2, timeout_s=30)
    publish(app, ledger, 100, start=100)
    report = finish(ledger, f"SIGSTOP broker 20 s (detected after {detected_s:.1f} s)", record_report, fault_end)
    assert report.recovery_s is not None


def test_a_memory_alarm_makes_publishes_fail_in_time_while_workers_keep_acking(
    app: App,
    rabbit_node: RabbitNode,
    ledger: Ledger,
    ledger_env: dict[str, Any],
    worker_factory,
    unique_name: str,
    record_report: list[Report],
) -> None:
    publish(app, ledger, 300)
    rabbit_node.ctl("set_vm_memory_high_watermark", "0")
    try:
        work = app.tasks["ledger.work"]
        app.close()  # a fresh connection sees the alarm at once
        start = time.monotonic()
        with pytest.raises(PublishError, match="blocked|not confirmed"):
            work.apply_async(("alarm-sync",), message_id="alarm-sync")
        assert time.monotonic() - start < 3 + 3
        ledger.failed.add("alarm-sync")
        # a worker started during the alarm consumes and acks: acks do not go over a publishing connection
        w = worker_factory(APP, "--prefetch", "50", env=ledger_env, broker_url=rabbit_node.url)
        w.wait_for_log("consuming from")
        ledger.wait_executed(ledger.confirmed, 30)
        amqp.wait_depth(rabbit_node.url, f"{unique_name}.work", 0)
    finally:
        rabbit_node.ctl("set_vm_memory_high_watermark", "0.4")
    fault_end = time.time()
    publish(app, ledger, 100, start=300)  # the backlog after the alarm drains too
    finish(ledger, "memory alarm", record_report, fault_end)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_publisher_connection_closed_mid_batch_confirms_or_raises_every_message(
    mode: str,
    app: App,
    rabbit_node: RabbitNode,
    ledger: Ledger,
    ledger_env: dict[str, Any],
    worker_factory,
    record_report: list[Report],
) -> None:
    keys = [f"b{i}" for i in range(30000)]
    work = app.tasks["ledger.work"]
    # rabbitmqctl takes ~0.5 s to act: started a little into the publishing, it lands in the middle of it
    closer = threading.Thread(target=rabbit_node.close_all_connections)
    attempted: list[str] = []
    failed: list[str] = []
    try:
        if mode == "sync":
            with app.batch():  # flushes every 10,000 messages: a failed flush raises from that call
                for i, k in enumerate(keys):
                    if i == 5000:
                        closer.start()
                    attempted.append(k)
                    work.apply_async((k,), message_id=k)
        else:

            async def run() -> None:
                async with app.abatch():
                    for i, k in enumerate(keys):
                        if i == 2000:
                            closer.start()
                        attempted.append(k)
                        await work.aapply_async((k,), message_id=k)

            asyncio.run(run())
    except BatchNotConfirmed as e:
        failed = e.failed_ids
    closer.join()
    assert set(failed) <= set(attempted)
    ledger.confirmed |= set(attempted) - set(failed)
    # every message either confirmed or raised; a re-send keeps its message id
    for k in failed:
        work.apply_async((k,), message_id=k)
    ledger.confirmed |= set(failed)
    ledger.resent |= set(failed)
    w = worker_factory(APP, "--prefetch", "200", env=ledger_env, broker_url=rabbit_node.url)
    w.wait_for_log("consuming from")
    report = finish(ledger, f"publisher connection closed mid-batch ({mode}, {len(failed)} re-sent)", record_report)
    assert report.confirmed == len(attempted) and failed  # the fault hit the batch


def test_bad_messages_are_dead_lettered_and_never_executed(
    broker_url: str, unique_name: str, ledger_env: dict[str, Any], worker_factory, tmp_path, amqp_cleanup
) -> None:
    q = amqp_cleanup.queue(f"{unique_name}.work")
    amqp_cleanup.queue(f"{q}.dlq")
    w = worker_factory(APP, env=ledger_env)
    w.wait_for_log("consuming from")
    canary = tmp_path / "canary"

    class Canary:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {canary}",))

    import pickle

    bad = [
        (b"{broken", {"content_type": "application/json", "type": "ledger.work"}),
        (b'{"v":1,"args":["x"],"kwargs":{}}', {"content_type": "text/plain", "type": "ledger.work"}),
        (pickle.dumps(Canary()), {"content_type": "application/x-python-serialize", "type": "ledger.work"}),
        (b'{"v":1,"args":[],"kwargs":{}}', {"content_type": "application/json", "type": "ledger.nope"}),
        (b'{"v":1,"args":[1,2,3],"kwargs":{}}', {"content_type": "application/json", "type": "ledger.work"}),
    ]
    for i, (body, props) in enumerate(bad):
        amqp.publish_raw(broker_url, q, body, message_id=f"bad{i}", **props)
    amqp.wait_depth(broker_url, f"{q}.dlq", len(bad))
    reasons = sorted(p.headers["rt-reason"] for p, _ in amqp.get_all(broker_url, f"{q}.dlq"))
    assert reasons == [
        "invalid arguments",
        "malformed message",
        "malformed message",
        "malformed message",
        "unknown task",
    ]
    assert not canary.exists() and w.proc.poll() is None
    report_line(
        f"[ledger] bad messages: published={len(bad)} executed=0 dead-lettered={len(reasons)} canary=absent worker=up"
    )
