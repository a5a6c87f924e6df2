"""Broker fixtures shared by the whole test suite.

``broker_url`` is the broker most tests use: rabbittask's own pytest plugin chooses it once per
session (``rabbittask_broker_url``), first that applies: ``RABBITTASK_TEST_BROKER_URL``; a
testcontainers RabbitMQ where a Docker engine answers (and the package is installed); a throwaway
node started from the local ``rabbitmq-server`` binary.
Fault tests get their own node (``rabbit_node``, ``rabbit_node_factory``) to stop, kill and restart.
Tests isolate by ``unique_name`` and delete what they declare through ``amqp_cleanup``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import pika
import pytest

from rabbittask.delays import delay_declarations
from rabbittask.testing import NodeError, RabbitNode, rabbitmq_bin_dir
from rabbittask.testing.brokers import BrokerUrl
from rabbittask.topology import QueueDecl
from tests import amqp

RabbitNodeFactory = Callable[..., RabbitNode]


_SESSION_NAMES: set[str] = set()
_LEDGER_LINES: list[str] = []  # the fault scenarios' reports (tests/faults/conftest.py, record_report)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "teardown":
        _LEDGER_LINES.extend(str(value) for name, value in report.user_properties if name == "ledger")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _LEDGER_LINES:
        terminalreporter.section("fault scenarios (ledger)")
        for line in _LEDGER_LINES:
            terminalreporter.write_line(line)


def _delete_test_objects(url: str) -> None:
    """Delete every queue and exchange this session named with `unique_name` from a long-lived broker.

    Tests delete what they declare, but a test with an exchange of its own also gets a delay ladder
    (26 quorum queues) and a failed test may leave its objects: hundreds of sessions of leftovers
    once made a shared node stop answering. Names are listed with rabbitmqctl, so this only runs
    where the broker is the local node; elsewhere it does nothing.
    """
    if urlsplit(url).hostname not in ("localhost", "127.0.0.1") or shutil.which("rabbitmqctl") is None:
        return
    names: dict[str, list[str]] = {}
    for kind in ("queues", "exchanges"):
        try:
            out = subprocess.run(
                ["rabbitmqctl", "-q", f"list_{kind}", "name", "--no-table-headers"],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return
        names[kind] = [n.strip() for n in out.splitlines() if n.strip().startswith(tuple(_SESSION_NAMES) or ("\0",))]
    if not names["queues"] and not names["exchanges"]:
        return
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        for queue in names["queues"]:
            channel.queue_delete(queue)
        for exchange in names["exchanges"]:
            channel.exchange_delete(exchange)
    finally:
        connection.close()


@pytest.fixture(scope="session")
def broker_url(rabbittask_broker_url: BrokerUrl) -> Iterator[str]:
    """URL of the broker shared by the session's integration tests: the plugin's (rabbittask.testing.pytest_plugin).

    The suite proves the plugin's broker fixture on every run; what the session named is deleted at its end.
    """
    yield rabbittask_broker_url
    if rabbittask_broker_url.source == "env":  # a long-lived broker: throwaway ones go with their leftovers
        _delete_test_objects(rabbittask_broker_url)


@pytest.fixture
def rabbit_node() -> Iterator[RabbitNode]:
    """A fresh throwaway node for this test alone (stop, kill, restart it at will)."""
    _need_rabbitmq_binary()
    with RabbitNode() as node:
        yield node


def _need_rabbitmq_binary() -> None:
    # Throwaway nodes run the local rabbitmq-server; `make test` installs it (as root) when no broker
    # answers, but a machine that reaches a remote broker may not have it.
    try:
        rabbitmq_bin_dir()
    except NodeError as e:
        pytest.skip(f"needs a local rabbitmq-server for throwaway nodes (apt-get install rabbitmq-server): {e}")


@pytest.fixture
def rabbit_node_factory() -> Iterator[RabbitNodeFactory]:
    """Start throwaway nodes with extra config, e.g. ``rabbit_node_factory(["consumer_timeout = 5000"])``."""
    nodes: list[RabbitNode] = []

    def start(extra_config: Sequence[str] = (), plugins: Sequence[str] = (), **kwargs: Any) -> RabbitNode:
        _need_rabbitmq_binary()
        node = RabbitNode(extra_config, plugins, **kwargs)
        nodes.append(node)  # before start(): a node that fails to boot is cleaned up too
        node.start()
        return node

    yield start
    for node in nodes:
        node.cleanup()


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Iterator[str]:
    """A short name unique to this test run, derived from the test name (for queues, exchanges).

    After a test on the shared broker, the delay ladders of an app on this name (or `<name>.x`) are
    deleted: 26 quorum queues each, which hold file handles on the broker until they go.
    """
    base = re.sub(r"[^A-Za-z0-9_.]+", "-", request.node.name.removeprefix("test_")).strip("-.")[:40]
    name = f"rt-{base}-{uuid.uuid4().hex[:8]}"
    _SESSION_NAMES.add(name)  # what is left under this prefix is deleted at the end of the session
    # Asked for now, so that it is torn down after this fixture (a module may override it with its own node).
    url = request.getfixturevalue("broker_url") if "broker_url" in request.fixturenames else None
    yield name
    if url is not None:
        _delete_ladders(url, name)


def _delete_ladders(url: str, name: str) -> None:
    """Delete the delay ladder of an app whose exchange is `name` or `name.x`, where one was declared.

    Per test, not only at the end of the session: a full run used to leave some 300 quorum queues on the
    shared broker, past the file handles a node started with `ulimit -n 1024` has, and it stopped answering.
    """
    found = []
    connection = amqp.connect(url, "test cleanup")
    try:
        for exchange in (name, f"{name}.x"):
            first = next(d.name for d in delay_declarations(exchange, []) if isinstance(d, QueueDecl))
            channel = connection.channel()
            try:
                channel.queue_declare(first, passive=True)
                found.append(exchange)
                channel.close()
            except pika.exceptions.ChannelClosedByBroker:
                pass  # not there: that channel is closed by the broker
    finally:
        connection.close()
    for exchange in found:
        amqp.delete_ladder(url, exchange)


class AmqpCleanup:
    """Queues and exchanges a test declared, deleted from the broker after the test."""

    def __init__(self, url: str, connection_name: str) -> None:
        self.url = url
        self.connection_name = connection_name
        self.queues: list[str] = []
        self.exchanges: list[str] = []

    def queue(self, name: str) -> str:
        """Delete queue ``name`` after the test; returns the name."""
        self.queues.append(name)
        return name

    def exchange(self, name: str) -> str:
        """Delete exchange ``name`` after the test; returns the name."""
        self.exchanges.append(name)
        return name

    def run(self) -> None:
        """Delete everything collected (missing ones are fine: delete is idempotent on RabbitMQ)."""
        if not (self.queues or self.exchanges):
            return
        params = pika.URLParameters(self.url)
        params.client_properties = {"connection_name": self.connection_name}
        connection = pika.BlockingConnection(params)
        try:
            channel = connection.channel()
            for queue in self.queues:
                channel.queue_delete(queue)
            for exchange in self.exchanges:
                channel.exchange_delete(exchange)
        finally:
            connection.close()


@pytest.fixture
def amqp_cleanup(broker_url: str, request: pytest.FixtureRequest) -> Iterator[AmqpCleanup]:
    """Collects names to delete on ``broker_url`` after the test: ``q = amqp_cleanup.queue(unique_name)``."""
    cleanup = AmqpCleanup(broker_url, f"rabbittask-tests cleanup {request.node.nodeid}"[:255])
    yield cleanup
    cleanup.run()


# ----------------------------------------------------------------------------------------------
# Worker fixtures go below this line (appended by the worker/ authors): e.g. a `worker_factory`
# that starts `rabbittask worker` against `broker_url` (or a `rabbit_node`) and always stops it.
# ----------------------------------------------------------------------------------------------
from tests.workers import worker_factory  # noqa: E402, F401 - the worker subprocess fixture
