"""Revocations while a worker's control connection is down: its tasks wait, and a revoked one never runs.

Found by the soak (`make soak`): a task revoked while the control connection of the worker that received
it was down (its node restarting, a connection closed) ran, since the revocation was only read once the
connection came back. The worker cannot know what was revoked meanwhile, so its tasks wait until the
revocations are read again.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rabbittask import App
from rabbittask.message import H_REASON
from rabbittask.testing import RabbitNode
from tests import amqp
from tests.waiting import assert_stays, wait_until
from tests.workers import WorkerFactory, WorkerProcess

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

APP = "tests.apps.control_app:app"
PREFIX = "ctlfault"
PASSWORD = "worker-secret"


@pytest.fixture
def app(rabbit_node: RabbitNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    monkeypatch.setenv("RT_TEST_PREFIX", PREFIX)
    monkeypatch.setenv("RT_TEST_LEDGER", str(tmp_path))
    monkeypatch.setenv("RABBITTASK_BROKER_URL", rabbit_node.url)
    sys.modules.pop("tests.apps.control_app", None)
    from tests.apps.control_app import app

    yield app
    app.close()


def runs(tmp_path: Path) -> list[str]:
    path = tmp_path / PREFIX
    return (
        [line.split()[1] for line in path.read_text().splitlines() if line.startswith("start ")]
        if path.exists()
        else []
    )


def worker_connections(node: RabbitNode) -> list[tuple[str, str]]:
    """(pid, connection name) of the connections the `worker` user holds."""
    listed = node.ctl("list_connections", "pid", "user", "client_properties", "--no-table-headers")
    found = []
    for line in listed.splitlines():
        pid, user, props = (line.split("\t") + ["", ""])[:3]
        if user.strip() == "worker":
            found.append((pid.strip(), props))
    return found


def start_worker(rabbit_node: RabbitNode, worker_factory: WorkerFactory) -> WorkerProcess:
    """A worker of its own user, so that its connections can be limited while the test's are not."""
    rabbit_node.ctl("add_user", "worker", PASSWORD)
    rabbit_node.ctl("set_permissions", "-p", "/", "worker", ".*", ".*", ".*")
    worker_url = rabbit_node.url.replace("guest:guest@", f"worker:{PASSWORD}@")
    w = worker_factory(APP, "-c", "1", prefix=PREFIX, broker_url=worker_url)
    w.wait_for_log("consuming from")
    return w


def lose_control_connection(rabbit_node: RabbitNode, w: WorkerProcess) -> None:
    """Close the worker's control connection; it cannot come back until the user limit is cleared."""
    held = worker_connections(rabbit_node)
    (control,) = [pid for pid, props in held if "worker control" in props]
    rabbit_node.ctl("set_user_limits", "worker", json.dumps({"max-connections": 0}))  # no new one, the rest stay
    rabbit_node.ctl("close_connection", control, "test: control connection lost")
    wait_until(lambda: "control connection lost" in w.log(), 10, lambda: w.log()[-3000:])


def test_tasks_wait_while_the_control_connection_is_down_and_one_revoked_meanwhile_never_runs(
    app: App, rabbit_node: RabbitNode, worker_factory: WorkerFactory, tmp_path: Path
) -> None:
    from tests.apps.control_app import record

    # Given a worker that has read the revocations and takes tasks
    w = start_worker(rabbit_node, worker_factory)
    record.delay("before")
    wait_until(lambda: "before" in runs(tmp_path), 20, lambda: w.log()[-3000:])
    # When its control connection is closed and cannot come back at once (the user may open no more connections)
    lose_control_connection(rabbit_node, w)
    lost = time.monotonic()
    # and a task is revoked while two wait to run (the revoke comes after they were delivered)
    revoked = record.apply_async(("revoked",), message_id=f"{PREFIX}-revoked")
    record.apply_async(("kept",), message_id=f"{PREFIX}-kept")
    app.control.revoke(revoked.id)
    assert_stays(lambda: runs(tmp_path) == ["before"], 1.0, "nothing runs while revocations cannot be read")
    # Then once the connection may come back, the revoked one is dead-lettered unrun and the other runs
    rabbit_node.ctl("clear_user_limits", "worker", "max-connections")
    wait_until(lambda: "kept" in runs(tmp_path), 30, lambda: w.log()[-3000:])
    amqp.wait_depth(rabbit_node.url, f"{PREFIX}.main.dlq", 1, timeout_s=20)
    dead = {
        p.message_id: (p.headers or {}).get(H_REASON) for p, _ in amqp.get_all(rabbit_node.url, f"{PREFIX}.main.dlq")
    }
    assert dead == {revoked.id: "revoked"}
    assert runs(tmp_path) == ["before", "kept"]
    # the tasks waited for the connection, not for the bound on waiting (5 s, then they run with what was read)
    assert "could not all be read" not in w.log(), (time.monotonic() - lost, w.log()[-3000:])


def test_tasks_wait_at_most_five_seconds_for_a_control_connection_that_does_not_come_back(
    app: App, rabbit_node: RabbitNode, worker_factory: WorkerFactory, tmp_path: Path
) -> None:
    from tests.apps.control_app import record

    # Given a worker whose control connection is lost and cannot come back
    w = start_worker(rabbit_node, worker_factory)
    lose_control_connection(rabbit_node, w)
    # When a task comes
    sent = time.monotonic()
    record.delay("late")
    # Then it runs after the bound, and the log says why
    wait_until(lambda: "late" in runs(tmp_path), 20, lambda: w.log()[-3000:])
    assert time.monotonic() - sent >= 4.5
    assert "the revocations of the window could not all be read within 5 s (no control connection" in w.log()
