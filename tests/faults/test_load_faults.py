"""Load that must not hurt: a huge delayed backlog, and a flood of RPC calls with callers that leave (17, 20).

`RT_DELAYED_TASKS` sets the delayed backlog: 30,000 in the whole suite, 100,000 under `make faults`.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import time
from typing import Any

import psutil
import pytest

from rabbittask import App
from rabbittask.testing import RabbitNode
from tests import amqp
from tests.faults.helpers import APP, finish
from tests.faults.ledger import Ledger, Report, report_line
from tests.workers import ROOT, WorkerProcess

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]
DELAYED = int(os.environ.get("RT_DELAYED_TASKS", "30000"))  # `make faults`: 100,000


@pytest.fixture
def node(worker_fault_node: RabbitNode) -> RabbitNode:
    return worker_fault_node


def purge_delay_ladder(node: RabbitNode) -> int:
    """Drop every message waiting in the node's delay ladder; returns how many there were (purge-ok counts:
    list_queues reports quorum queue lengths from periodic stats, a few seconds behind)."""
    out = node.ctl("list_queues", "name", "--no-table-headers", "-q")
    ladder = [name.strip() for name in out.splitlines() if name.strip().startswith("rabbittask.delay.")]
    connection = amqp.connect(node.url)
    try:
        channel = connection.channel()
        return sum(channel.queue_purge(name).method.message_count for name in ladder)
    finally:
        connection.close()


def worker_rss_mb(w: WorkerProcess) -> float:
    """Resident memory of the supervisor and its children together, in MB."""
    supervisor = psutil.Process(w.pid)
    total = 0
    for p in [supervisor, *supervisor.children()]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


class LiveTraffic:
    """Publishes `ledger.work` tasks from a thread, one every `every_s`, remembering when each was sent."""

    def __init__(self, app: App, ledger: Ledger, prefix: str, every_s: float = 0.05) -> None:
        self.app, self.ledger, self.prefix, self.every_s = app, ledger, prefix, every_s
        self.sent_at: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="live-traffic")

    def __enter__(self) -> LiveTraffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        work = self.app.tasks["ledger.work"]
        i = 0
        try:
            while not self._stop.wait(self.every_s):
                key = f"{self.prefix}{i}"
                self.sent_at[key] = time.time()
                work.apply_async((key,), message_id=key)
                self.ledger.confirmed.add(key)
                i += 1
        finally:
            self.app.close()  # this thread's publisher connection

    def latencies_s(self) -> list[float]:
        """Publish to start, per live task that started."""
        starts = {run.key: run.start for run in self.ledger.runs()}
        return sorted(starts[k] - t for k, t in self.sent_at.items() if k in starts)


def test_a_thousand_concurrent_calls_and_callers_that_leave_never_block_the_worker(
    app: App,
    node: RabbitNode,
    ledger: Ledger,
    ledger_env: dict[str, str],
    worker_factory: Any,
    unique_name: str,
    record_report: list[Report],
) -> None:
    w = worker_factory(APP, "-c", "2", env=ledger_env, broker_url=node.url)
    w.wait_for_log("consuming from", count=2)
    echo = app.tasks["ledger.echo"]
    # Given callers that leave before their reply: one killed (kill -9), one that timed out
    script = (
        "import sys; from tests.faults.helpers import ledger_app; "
        "ledger_app(sys.argv[1], sys.argv[2]).tasks['ledger.echo'].call('gone', sleep_s=1.0, timeout=30)"
    )
    caller = subprocess.Popen([sys.executable, "-c", script, node.url, unique_name], cwd=ROOT)
    with pytest.raises(TimeoutError) as timed_out:
        echo.call("late", sleep_s=1.0, timeout=0.3)
    assert re.fullmatch(r"no reply from task 'ledger.echo' \(id [0-9a-f-]{36}\) within 0.3 s", str(timed_out.value))
    caller.kill()
    caller.wait(10)

    async def flood() -> list[Any]:
        with pytest.raises(TimeoutError, match=r"no reply from task 'ledger.echo' \(id [0-9a-f-]{36}\) within 0.2 s"):
            await echo.acall("late-async", sleep_s=1.0, timeout=0.2)
        try:
            return await asyncio.gather(*(echo.acall(f"a{i}", timeout=60) for i in range(1000)))
        finally:
            await app.aclose()

    sync_results: dict[str, Any] = {}

    def sync_caller(n: int) -> None:
        for i in range(25):
            sync_results[f"s{n}.{i}"] = echo.call(f"s{n}.{i}", timeout=60)

    # When 1,000 async calls and 100 sync calls from 4 threads run at once, beside ordinary tasks
    threads = [threading.Thread(target=sync_caller, args=(n,)) for n in range(4)]
    with LiveTraffic(app, ledger, "neighbour") as live:
        for t in threads:
            t.start()
        started = time.monotonic()
        async_results = asyncio.run(flood())
        for t in threads:
            t.join(60)
        flood_s = time.monotonic() - started
    # Then every caller got its own reply (none another's, none the late ones), and a call after them too
    assert async_results == [f"a{i}" for i in range(1000)]
    assert sync_results == {k: k for k in sync_results} and len(sync_results) == 100
    assert echo.call("after", timeout=10) == "after"
    report = finish(ledger, "1,100 concurrent calls + callers that left (neighbour tasks)", record_report)
    latencies = live.latencies_s()
    report_line(
        f"[ledger] direct reply-to: 1,100 calls in {flood_s:.1f} s; neighbour latency max "
        f"{latencies[-1] * 1000:.0f} ms over {len(latencies)} tasks"
    )
    # And the worker never blocked: its neighbour tasks started within a second throughout
    assert latencies[-1] < 1.0 and report.duplicates == 0
    assert w.proc.poll() is None and "Traceback" not in w.log()
    amqp.wait_depth(node.url, echo.queue, 0)


def test_tasks_delayed_an_hour_cost_the_worker_no_memory_and_live_tasks_stay_fast(
    app: App,
    node: RabbitNode,
    ledger: Ledger,
    ledger_env: dict[str, str],
    worker_factory: Any,
    record_report: list[Report],
) -> None:
    w = worker_factory(APP, "-c", "2", env=ledger_env, broker_url=node.url)
    w.wait_for_log("consuming from", count=2)
    idle_mb = worker_rss_mb(w)
    work = app.tasks["ledger.work"]
    peak_mb = 0.0
    try:
        # Given live tasks coming all along, one every 50 ms
        with LiveTraffic(app, ledger, "live") as live:
            # When DELAYED tasks due in an hour are enqueued (they wait in the broker's delay ladder)
            started = time.monotonic()
            with app.batch():
                for i in range(DELAYED):
                    work.apply_async((f"later{i}",), countdown=3600, message_id=f"later{i}")
                    if i % 10_000 == 0:
                        peak_mb = max(peak_mb, worker_rss_mb(w))
            enqueue_s = time.monotonic() - started
            for _ in range(8):
                time.sleep(0.25)
                peak_mb = max(peak_mb, worker_rss_mb(w))
        what = f"{DELAYED:,} tasks delayed 1 h + live traffic"
        report = finish(ledger, what, record_report, allow_duplicates=False)
    finally:
        waiting = purge_delay_ladder(node)  # the node serves other scenarios after this one
    latencies = live.latencies_s()
    report_line(
        f"[ledger] {DELAYED:,} delayed (enqueued in {enqueue_s:.1f} s): worker RSS {idle_mb:.0f} MB idle, peak "
        f"{peak_mb:.0f} MB; live latency p50 {latencies[len(latencies) // 2] * 1000:.0f} ms, "
        f"max {latencies[-1] * 1000:.0f} ms over {len(latencies)} tasks"
    )
    # Then the worker holds none of them, its memory stays small and live tasks start within 1 s
    assert peak_mb < 200 and latencies[-1] < 1.0
    assert report.executed == len(live.sent_at) >= 30
    assert not any(run.key.startswith("later") for run in ledger.runs())
    assert waiting == DELAYED  # every one was still waiting on the broker
