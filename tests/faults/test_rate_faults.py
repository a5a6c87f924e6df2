"""Rate limits under a broker fault: every connection closed at once (`close_connection`), the rate comes back.

Found by the soak (`make soak`): after a close of every client, rate-limited tasks stopped for good. Two causes,
both in worker/rates.py: a run waiting for a token was cancelled with the session but left its `get()` of the
child's token queue behind, which took the next token and never acked it (the consumer, prefetch 1, got no
more); and a child standing for minter whose spare baton was refused (one waits already) left its consumer on
an abandoned channel, which the broker then handed the baton to, so no one minted.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rabbittask import App
from rabbittask.testing import RabbitNode
from tests.integration.test_rate_limits import APP, fill, per_window, starts
from tests.waiting import wait_until
from tests.workers import WorkerProcess, worker_env

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]


@pytest.fixture
def app(rabbit_node: RabbitNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    monkeypatch.setenv("RT_TEST_PREFIX", "ratefault")
    monkeypatch.setenv("RT_TEST_LEDGER", str(tmp_path))
    monkeypatch.setenv("RABBITTASK_BROKER_URL", rabbit_node.url)
    sys.modules.pop("tests.apps.control_app", None)
    from tests.apps.control_app import app

    yield app
    app.close()


def test_a_rate_limited_task_goes_on_at_its_rate_after_every_connection_was_closed(
    app: App, rabbit_node: RabbitNode, tmp_path: Path
) -> None:
    # Given two workers of 2 children running a 20/s task from a backlog
    env = {"RT_TEST_PREFIX": "ratefault", "RT_TEST_LEDGER": str(tmp_path)}
    workers = [
        WorkerProcess(["-A", APP, "-c", "2"], worker_env(rabbit_node.url, env), tmp_path / f"w{i}.log")
        for i in range(2)
    ]
    try:
        fill(app, 600)
        wait_until(lambda: len(starts(tmp_path, "ratefault")) >= 40, 40)
        # When the broker closes every client connection
        rabbit_node.close_all_connections("test: close every connection")
        closed = len(starts(tmp_path, "ratefault"))
        # Then the runs go on (before the fix: none ever again), and never above the limit
        wait_until(lambda: len(starts(tmp_path, "ratefault")) >= closed + 100, 60, lambda: workers[0].log()[-3000:])
        times = starts(tmp_path, "ratefault")
        rates = per_window(times, times[0], times[-1])
        assert max(rates) <= 22.0, rates
    finally:
        for w in workers:
            w.stop()
