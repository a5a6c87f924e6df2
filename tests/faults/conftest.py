"""Fixtures of the fault suite: the node a scenario runs on, the ledger app on it, a ledger per scenario and
worker env for the ledger app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rabbittask import App
from rabbittask.testing import RabbitNode
from tests.conftest import _need_rabbitmq_binary
from tests.faults.helpers import ledger_app
from tests.faults.ledger import CURRENT_TEST, Ledger, Report


@pytest.fixture(scope="session")
def worker_fault_node() -> Iterator[RabbitNode]:
    """One throwaway node for the scenarios that fault workers, callers or the network, never the broker itself
    (a boot takes 5-15 s here); each test names its queues with `unique_name` and leaves the node as it found it."""
    _need_rabbitmq_binary()
    with RabbitNode() as node:
        yield node


@pytest.fixture
def node(rabbit_node: RabbitNode) -> RabbitNode:
    """The node of the scenario: a fresh one (`rabbit_node`) to stop, kill or restart. Modules that fault
    workers, callers or the network only override it with the shared `worker_fault_node`."""
    return rabbit_node


@pytest.fixture
def app_settings() -> dict[str, Any]:
    """Settings of the `app` fixture beyond the ledger app's (a module overrides it, e.g. a delivery limit)."""
    return {}


@pytest.fixture
def app(node: RabbitNode, unique_name: str, app_settings: dict[str, Any]) -> Iterator[App]:
    """The ledger app on the scenario's node, named by the test; closed after it."""
    app = ledger_app(node.url, unique_name, **app_settings)
    yield app
    app.close()


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    directory = tmp_path / "ledger"
    directory.mkdir()
    return Ledger(directory)


@pytest.fixture
def ledger_env(ledger: Ledger, unique_name: str) -> dict[str, str]:
    """Environment for a worker on tests.apps.ledger_app with quick heartbeats and timeouts."""
    return {
        "RT_LEDGER_DIR": str(ledger.directory),
        "RT_TEST_PREFIX": unique_name,
        "RABBITTASK_HEARTBEAT_S": "2",
        "RABBITTASK_PUBLISH_TIMEOUT_S": "3",
        "RABBITTASK_CONNECT_TIMEOUT_S": "3",
    }


@pytest.fixture
def record_report() -> list[Report]:
    """The reports of this test's scenarios (each also printed and summarised through `ledger.report_line`)."""
    return []


@pytest.fixture(autouse=True)
def _current_test(request: pytest.FixtureRequest) -> Iterator[None]:
    CURRENT_TEST.append(request.node)
    yield
    CURRENT_TEST.pop()
