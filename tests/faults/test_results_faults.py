"""RPC when the broker drops its connections: calls fail fast with `ConnectionLost`, then recover."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rabbittask import ConnectionLost
from rabbittask.testing import RabbitNode
from tests.apps.results_app import make_app
from tests.waiting import wait_until
from tests.workers import WorkerProcess, worker_env

pytestmark = pytest.mark.faults

APP = "tests.apps.results_app:app"


def eventually(call: Callable[[], Any], timeout_s: float = 30) -> Any:
    """The result of `call`, retried while it fails with `ConnectionLost` (the worker reconnects too)."""
    (result,) = wait_until(lambda: (call(),), timeout_s, "an answer", interval_s=0.5, ignoring=(ConnectionLost,))
    return result


def test_calls_recover_after_the_broker_closes_their_connections(rabbit_node: RabbitNode, tmp_path: Path) -> None:
    prefix = "rt-results-faults"
    w = WorkerProcess(["-A", APP], worker_env(rabbit_node.url, {"RT_TEST_PREFIX": prefix}), tmp_path / "worker.log")
    app = make_app(prefix, rabbit_node.url)
    echo, aecho = app.tasks["results.echo"], app.tasks["results.aecho"]
    loop = asyncio.new_event_loop()
    try:
        w.wait_for_log("consuming from")
        assert echo.call(1, timeout=10) == 1
        assert loop.run_until_complete(aecho.acall(1, timeout=10)) == 1
        # When the broker closes every connection (the RPC ones and the worker's)
        rabbit_node.close_all_connections()
        # Then a call fails at once with ConnectionLost or succeeds on a new connection, never hangs
        started = time.monotonic()
        assert eventually(lambda: echo.call(2, timeout=15)) == 2
        assert eventually(lambda: loop.run_until_complete(aecho.acall(2, timeout=15))) == 2
        assert time.monotonic() - started < 30
    finally:
        loop.run_until_complete(app.aclose())
        loop.close()
        app.close()
        w.stop()
