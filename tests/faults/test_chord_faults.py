"""Chords under faults, judged by the ledger: the joiner and members' children killed with SIGKILL, and the
broker restarted mid-chord. The callback must run exactly once, with every member's result in order.

`RT_CHORD_FAULT_MEMBERS` sets the chord's size: 1,000 in the whole suite, 5,000 (as specified) under `make faults`.
"""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rabbittask import App, chord
from rabbittask.testing import RabbitNode
from tests import amqp
from tests.apps.workflow_app import make_app, read_ledger
from tests.faults.ledger import report_line
from tests.waiting import assert_stays, wait_until
from tests.workers import WorkerProcess

pytestmark = [pytest.mark.faults, pytest.mark.timeout(360)]

APP = "tests.apps.workflow_app:app"
MEMBERS = int(os.environ.get("RT_CHORD_FAULT_MEMBERS", "1000"))  # `make faults`: 5,000
ACTIVE = re.compile(r"chord joiner active on \S+ \(pid (\d+)\)")


@pytest.fixture
def prefix() -> str:
    return f"rt-chordfault-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def ledger_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "ledger"
    directory.mkdir()
    return directory


def chord_env(prefix: str, ledger_dir: Path) -> dict[str, str]:
    return {
        "RT_TEST_PREFIX": prefix,
        "RT_TEST_LEDGER": str(ledger_dir),
        "RABBITTASK_HEARTBEAT_S": "2",
        "RABBITTASK_PUBLISH_TIMEOUT_S": "3",
        "RABBITTASK_CONNECT_TIMEOUT_S": "3",
        "RABBITTASK_JOIN_PREFETCH": "500",  # a joiner compacts about every 500 records: that path is under fire too
    }


@pytest.fixture
def chord_app(prefix: str, rabbit_node: RabbitNode) -> Iterator[App]:
    app = make_app(prefix, rabbit_node.url, heartbeat_s=2, publish_timeout_s=3)
    yield app
    app.close()


def members_run(ledger_dir: Path) -> list[int]:
    return [int(r["i"]) for r in read_ledger(str(ledger_dir)) if r["event"] == "member"]


def callbacks(ledger_dir: Path, tag: str) -> list[dict[str, Any]]:
    return [r for r in read_ledger(str(ledger_dir)) if r["event"] == "callback" and r["tag"] == tag]


def start_chord(app: App, tag: str) -> str:
    sleepy, collect = app.tasks["wf.sleepy"], app.tasks["wf.collect"]
    c = chord((sleepy.s(i, 0.002, ledger=True) for i in range(MEMBERS)), collect.s(tag=tag))
    c.delay()
    return c.id


def judge(ledger_dir: Path, tag: str, chord_id: str, scenario: str, started: float) -> None:
    """The callback ran once, with every result in member order; say what the ledger shows."""
    (run,) = wait_until(lambda: callbacks(ledger_dir, tag), 240, f"the callback of {scenario}")
    assert_stays(lambda: len(callbacks(ledger_dir, tag)) == 1, 3.0, "the callback runs once")
    assert run["id"] == f"{chord_id}:callback"
    assert run["results"] == list(range(MEMBERS))
    runs = members_run(ledger_dir)
    assert set(runs) == set(range(MEMBERS))
    report_line(
        f"[ledger] {scenario}: {MEMBERS} members, {len(runs)} member runs ({len(runs) - MEMBERS} repeated after the "
        f"faults), callback runs=1 with {len(run['results'])} results in order, "
        f"{float(run['t']) - started:.1f} s from send to callback"
    )


def test_kill_9_of_the_joiner_and_of_members_children_calls_back_once_with_every_result(
    worker_fault_node: RabbitNode, prefix: str, ledger_dir: Path, worker_factory: Any
) -> None:
    # Given a chord on 2 workers of 2 children each (every child stands by as a joiner); the broker is not
    # faulted here, so the session's shared node serves (its own join queue, named by the test)
    env = chord_env(prefix, ledger_dir)
    url = worker_fault_node.url
    workers: list[WorkerProcess] = [
        worker_factory(APP, "-c", "2", "--prefetch", "50", env=env, broker_url=url) for _ in range(2)
    ]
    for w in workers:
        w.wait_for_log("consuming from", count=2)
    started = time.time()
    app = make_app(prefix, url, heartbeat_s=2, publish_timeout_s=3)
    try:
        chord_id = start_chord(app, "kill")
    finally:
        app.close()

    # When the active joiner is killed with SIGKILL once a quarter of the members ran
    def active_joiner() -> int | None:
        for w in workers:
            if m := ACTIVE.search(w.log()):
                return int(m.group(1))
        return None

    joiner = wait_until(active_joiner, 60, "a joiner became active")
    wait_until(lambda: len(members_run(ledger_dir)) >= MEMBERS // 4, 120, "a quarter of the members ran")
    os.kill(joiner, signal.SIGKILL)
    # and a child running members (not the joiner) is killed at half
    wait_until(lambda: len(members_run(ledger_dir)) >= MEMBERS // 2, 120, "half of the members ran")
    others = [pid for w in workers for pid in w.children() if pid != joiner]
    os.kill(others[0], signal.SIGKILL)
    # Then another joiner takes over and the callback runs once with all results
    try:
        judge(
            ledger_dir, "kill", chord_id, "chord: kill -9 of the joiner and of a member child, 2 workers x 2", started
        )
        assert sum(len(ACTIVE.findall(w.log())) for w in workers) >= 2  # a second joiner took over
    finally:
        for w in workers:
            w.stop()
        amqp.delete(url, [f"{prefix}.wf", f"{prefix}.wf.dlq", f"{prefix}.join"])  # the shared node as it was


def test_a_broker_restart_mid_chord_calls_back_once_with_every_result(
    chord_app: App, rabbit_node: RabbitNode, prefix: str, ledger_dir: Path, worker_factory: Any
) -> None:
    # Given a chord running on one worker of 2 children
    env = chord_env(prefix, ledger_dir)
    w = worker_factory(APP, "-c", "2", "--prefetch", "50", env=env, broker_url=rabbit_node.url)
    w.wait_for_log("consuming from", count=2)
    started = time.time()
    chord_id = start_chord(chord_app, "restart")
    # When the broker restarts once a third of the members ran
    wait_until(lambda: len(members_run(ledger_dir)) >= MEMBERS // 3, 120, "a third of the members ran")
    rabbit_node.restart()
    # Then the workers reconnect and the callback runs once with all results
    judge(ledger_dir, "restart", chord_id, "chord: broker restart mid-chord, 1 worker x 2", started)
