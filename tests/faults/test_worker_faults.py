"""Worker-side scenarios of the fault suite on throwaway nodes: baseline, overflow, size limits, retries.

`RT_CHILD_PER_TASK` sets how many tasks run with `--max-tasks-per-child 1`: 300 in the whole suite,
1,000 under `make faults`.
"""

from __future__ import annotations

import asyncio
import os
import statistics
from typing import Any

import psutil
import pytest

from rabbittask import App, BatchNotConfirmed, PayloadError, PublishNotConfirmed
from rabbittask.testing import RabbitNode
from tests import amqp
from tests.faults.helpers import APP, finish, publish
from tests.faults.ledger import Ledger, Report, report_line

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]
CHILD_PER_TASK = int(os.environ.get("RT_CHILD_PER_TASK", "300"))  # `make faults`: 1,000


def test_baseline_5k_tasks_on_two_workers_of_two_children_lose_and_repeat_nothing(
    app: App,
    rabbit_node: RabbitNode,
    ledger: Ledger,
    ledger_env: dict[str, Any],
    worker_factory,
    record_report: list[Report],
) -> None:
    workers = [
        worker_factory(APP, "-c", "2", "--prefetch", "50", env=ledger_env, broker_url=rabbit_node.url) for _ in range(2)
    ]
    for w in workers:
        w.wait_for_log("consuming from", count=2)
    publish(app, ledger, 5000)
    report = finish(ledger, "baseline 5k, 2 workers x 2 children", record_report, allow_duplicates=False)
    assert len({r["pid"] for r in ledger.records()}) == 4  # all four children took part
    assert report.executed == 5000


def test_a_full_queue_with_reject_publish_nacks_overflow_and_never_reports_success(
    rabbit_node: RabbitNode, unique_name: str
) -> None:
    app = App("overflow", broker_url=rabbit_node.url, publish_timeout_s=3)

    @app.task(queue=unique_name, name="overflow.t", max_length=10, overflow="reject-publish")
    def t(i: int) -> None: ...

    try:
        # quorum queues check the limit as a message arrives: the one that crosses it is still taken
        accepted = 0
        with pytest.raises(PublishNotConfirmed, match=r"rejected by the broker \(nack\)"):
            for i in range(12):
                t.delay(i)
                accepted += 1
        assert accepted in (10, 11)

        async def overflow_async() -> None:
            with pytest.raises(PublishNotConfirmed, match=r"rejected by the broker \(nack\)"):
                await t.adelay(11)

        asyncio.run(overflow_async())
        with pytest.raises(BatchNotConfirmed) as info:
            with app.batch():
                for i in range(20, 25):
                    t.apply_async((i,), message_id=f"over-{i}")
        assert sorted(info.value.failed_ids) == [f"over-{i}" for i in range(20, 25)]
        assert amqp.depth(rabbit_node.url, unique_name) == accepted  # every confirm was real
        report_line(
            f"[ledger] x-max-length 10, reject-publish: confirmed={accepted} in queue={accepted} "
            f"nacked=1 sync + 1 async + 5 of a batch, none reported as success"
        )
    finally:
        app.close()


def test_a_payload_over_the_limit_raises_before_sending_and_nothing_is_dropped(
    rabbit_node: RabbitNode, unique_name: str
) -> None:
    app = App("size", broker_url=rabbit_node.url, max_payload_bytes=64 * 1024)

    @app.task(queue=unique_name, name="size.t")
    def t(blob: str) -> None: ...

    try:
        t.delay("small")
        with pytest.raises(PayloadError, match=r"the message body is \d+ bytes, above max_payload_bytes \(65536\)"):
            t.delay("x" * 70_000)
        with pytest.raises(PayloadError, match="above max_payload_bytes"):
            asyncio.run(t.adelay("x" * 70_000))
        assert amqp.depth(rabbit_node.url, unique_name) == 1
        report_line(
            "[ledger] payload over max_payload_bytes: confirmed=1 in queue=1, 2 over the limit raised before sending"
        )
    finally:
        app.close()


def test_500_tasks_retried_3_times_through_the_ladder_are_never_dropped(
    rabbit_node: RabbitNode,
    unique_name: str,
    ledger: Ledger,
    ledger_env: dict[str, Any],
    worker_factory,
    record_report: list[Report],
) -> None:
    # Given 500 tasks that fail three times, half retried after 1 s and half after 5 s
    app = App("ledger", broker_url=rabbit_node.url, heartbeat_s=2, publish_timeout_s=3)

    @app.task(queue=f"{unique_name}.work", name="ledger.flaky", bind=True, max_retries=3)
    def flaky(ctx: Any, key: str, delay_s: float) -> str: ...

    w = worker_factory(APP, "-c", "2", "--prefetch", "100", env=ledger_env, broker_url=rabbit_node.url)
    w.wait_for_log("consuming from", count=2)
    delays = {f"r{i}": (1.0 if i % 2 else 5.0) for i in range(500)}
    try:
        with app.batch():
            for key, delay_s in delays.items():
                flaky.apply_async((key, delay_s), message_id=key)
    finally:
        app.close()
    ledger.confirmed |= set(delays)
    # Then every one runs four times and ends (a dead-letter cycle would drop some on their 2nd retry)
    report = finish(ledger, "500 tasks x 3 retries via the ladder (1 s / 5 s)", record_report, timeout_s=90)
    lateness: dict[float, list[float]] = {1.0: [], 5.0: []}
    starts: dict[str, dict[str, float]] = {}
    for r in ledger.records():
        starts.setdefault(str(r["key"]), {})[str(r["event"])] = float(r["t"])  # type: ignore[arg-type]
    for key, events in starts.items():
        for n in (1, 2, 3):
            if f"attempt{n}" in events and f"attempt{n + 1}" in events:
                lateness[delays[key]].append(events[f"attempt{n + 1}"] - events[f"attempt{n}"] - delays[key])
    p99 = {d: statistics.quantiles(v, n=100)[98] for d, v in lateness.items()}
    report_line(f"[ledger] retry lateness p99: 1 s tier {p99[1.0]:.3f} s, 5 s tier {p99[5.0]:.3f} s")
    assert report.executed == 500 and all(len(v) == 750 for v in lateness.values())
    assert 1.0 + p99[1.0] < 2.0  # the 1 s tier's p99 is under 2 s
    assert min(min(v) for v in lateness.values()) > -0.05  # never early
    assert amqp.depth(rabbit_node.url, f"{unique_name}.work.dlq") == 0


@pytest.mark.timeout(420)  # a child per task, one after another: slower on a loaded machine
def test_one_task_per_child_loses_and_repeats_nothing_and_the_supervisor_does_not_grow(
    app: App,
    rabbit_node: RabbitNode,
    ledger: Ledger,
    ledger_env: dict[str, Any],
    worker_factory,
    record_report: list[Report],
) -> None:
    w = worker_factory(APP, "-c", "2", "--max-tasks-per-child", "1", env=ledger_env, broker_url=rabbit_node.url)
    w.wait_for_log("consuming from", count=2)
    supervisor = psutil.Process(w.pid)
    rss_start = supervisor.memory_info().rss
    publish(app, ledger, CHILD_PER_TASK)
    what = f"--max-tasks-per-child 1, {CHILD_PER_TASK:,} tasks"
    report = finish(ledger, what, record_report, timeout_s=360, allow_duplicates=False)
    growth = supervisor.memory_info().rss / rss_start - 1
    report_line(f"[ledger] supervisor RSS {rss_start / 2**20:.1f} MB -> {supervisor.memory_info().rss / 2**20:.1f} MB")
    assert report.executed == CHILD_PER_TASK
    assert len({r["pid"] for r in ledger.records()}) == CHILD_PER_TASK  # every task ran in a child of its own
    assert growth < 0.10
