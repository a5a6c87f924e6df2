"""The control plane with real workers and a real broker: ping and inspect, durable revoke, terminate, signing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rabbittask import App
from rabbittask.message import H_REASON
from rabbittask.topology import control_exchange_name, presence_stream_name, revoked_stream_name
from tests import amqp
from tests.waiting import assert_stays, wait_until
from tests.workers import ROOT, WorkerFactory, WorkerProcess, worker_env

APP = "tests.apps.control_app:app"


@pytest.fixture
def prefix(unique_name: str, broker_url: str) -> Iterator[str]:
    yield unique_name
    amqp.delete(
        broker_url,
        [
            f"{unique_name}.main",
            f"{unique_name}.main.dlq",
            f"{unique_name}.limited",
            f"{unique_name}.limited.dlq",
            f"{unique_name}.rate.ctl.limited",
            revoked_stream_name(unique_name),
            presence_stream_name(unique_name),
        ],
        [control_exchange_name(unique_name)],
    )
    amqp.delete_ladder(broker_url, unique_name)


@pytest.fixture
def app(prefix: str, broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    """The test app as this process sees it (same exchange, tasks and queue as the workers')."""
    monkeypatch.setenv("RT_TEST_PREFIX", prefix)
    monkeypatch.setenv("RT_TEST_LEDGER", str(tmp_path))
    monkeypatch.setenv("RABBITTASK_BROKER_URL", broker_url)
    sys.modules.pop("tests.apps.control_app", None)
    from tests.apps.control_app import app

    yield app
    app.close()


def ledger(tmp_path: Path, prefix: str) -> list[tuple[str, str]]:
    path = tmp_path / prefix
    if not path.exists():
        return []
    return [tuple(line.split()[:2]) for line in path.read_text().split("\n")[:-1]]  # type: ignore[misc]


def dead_letters(broker_url: str, prefix: str) -> dict[str, str]:
    """Task id -> rt-reason of the messages in the dead-letter queue (taken off it)."""
    return {p.message_id: (p.headers or {}).get(H_REASON) for p, _ in amqp.get_all(broker_url, f"{prefix}.main.dlq")}


def start(worker_factory: WorkerFactory, prefix: str, *args: str, children: int = 1) -> WorkerProcess:
    w = worker_factory(APP, "-c", str(children), *args, prefix=prefix)
    w.wait_for_children(children)
    wait_until(lambda: w.log().count("consuming from") >= children, 20, lambda: w.log()[-3000:])
    return w


def test_every_child_of_two_workers_answers_ping_within_a_second_and_a_stopped_worker_is_missing(
    app: App, prefix: str, worker_factory: WorkerFactory
) -> None:
    # Given two workers of two children each
    first = start(worker_factory, prefix, children=2)
    second = start(worker_factory, prefix, children=2)
    children = {f"{os.uname().nodename}:{pid}" for pid in first.children() + second.children()}

    # When the app pings them, every child answers within a second (and the call returns once all did)
    began = time.monotonic()
    replies = app.control.ping(timeout=1.0)
    assert time.monotonic() - began < 1.5
    assert set(replies.replies) == children
    assert set(replies.replies.values()) == {"pong"} and replies.missing == []
    assert set(replies.supervisors.values()) >= {f"{os.uname().nodename}:{first.proc.pid}"}

    # When the second worker is stopped (SIGSTOP, children included), it is named missing, not left out
    stopped = set(second.children())
    for pid in [second.proc.pid, *stopped]:
        os.kill(pid, signal.SIGSTOP)
    try:
        replies = app.control.ping(timeout=1.0)
        assert set(replies.missing) == {f"{os.uname().nodename}:{pid}" for pid in stopped}
        assert set(replies.replies) == children - set(replies.missing)
    finally:
        for pid in [second.proc.pid, *stopped]:
            os.kill(pid, signal.SIGCONT)


def test_inspect_active_stats_registered_and_queues_describe_each_child(
    app: App, prefix: str, worker_factory: WorkerFactory
) -> None:
    from tests.apps.control_app import record

    start(worker_factory, prefix)
    handle = record.delay("busy", sleep_s=3.0)
    inspect = app.control.inspect(timeout=1.0)
    active = wait_until(lambda: [a for r in inspect.active().replies.values() for a in r], 10)
    assert active[0]["id"] == handle.id and active[0]["name"] == "ctl.record"
    assert "'busy'" in active[0]["args"] and active[0]["runtime_s"] >= 0
    (stats,) = inspect.stats().replies.values()
    assert {"pid", "uptime_s", "done", "failed", "rss_bytes", "prefetch", "queues"} <= set(stats)
    assert stats["queues"] == [f"{prefix}.limited", f"{prefix}.main"] and stats["rss_bytes"] > 1_000_000
    assert stats["rate_limits"] == {"ctl.limited": "20/s"}
    (registered,) = inspect.registered().replies.values()
    assert registered == ["ctl.async_sleep", "ctl.checking", "ctl.limited", "ctl.record"]
    (queues,) = inspect.queues().replies.values()
    assert queues == [{"name": f"{prefix}.limited", "type": "quorum"}, {"name": f"{prefix}.main", "type": "quorum"}]


def test_a_task_revoked_before_any_worker_ran_and_one_revoked_before_a_restart_never_run(
    app: App, prefix: str, worker_factory: WorkerFactory, broker_url: str, tmp_path: Path
) -> None:
    from tests.apps.control_app import record

    # Given a task revoked while no worker runs
    early = record.delay("early")
    app.control.revoke(early.id)
    # When a worker starts, it is dead-lettered `revoked` and never runs; a task not revoked runs
    worker = start(worker_factory, prefix)
    record.delay("other")
    wait_until(lambda: ("done", "other") in ledger(tmp_path, prefix), 20)
    amqp.wait_depth(broker_url, f"{prefix}.main.dlq", 1)

    # Given a task revoked while a worker runs (delivered later: a countdown), then every worker restarted
    late = record.apply_async(args=("late",), countdown=6)
    late.revoke()
    worker.stop()
    start(worker_factory, prefix)
    # Then it is dead-lettered `revoked` by the new worker, and never ran
    amqp.wait_depth(broker_url, f"{prefix}.main.dlq", 2, timeout_s=30)
    assert dead_letters(broker_url, prefix) == {early.id: "revoked", late.id: "revoked"}
    assert not {("start", "early"), ("start", "late")} & set(ledger(tmp_path, prefix))


def test_when_the_broker_cancels_the_revocation_stream_consumer_the_worker_reads_it_again(
    app: App, prefix: str, worker_factory: WorkerFactory, broker_url: str, tmp_path: Path
) -> None:
    from tests.apps.control_app import record

    # Given a worker following the revocations
    worker = start(worker_factory, prefix)
    # When its stream consumer is cancelled by the broker (here: the stream deleted; a member's node going down
    # does the same), then a task is revoked before it is due
    amqp.delete(broker_url, [revoked_stream_name(prefix)])
    wait_until(lambda: "cancelled the consumer of the revocation stream" in worker.log(), 10)
    late = record.apply_async(args=("late",), countdown=4)
    late.revoke()
    # Then the worker reads the stream again, and the task is dead-lettered unrun (before the fix it ran:
    # the cancelled consumer went unnoticed and no revocation reached the worker any more)
    amqp.wait_depth(broker_url, f"{prefix}.main.dlq", 1, timeout_s=30)
    assert dead_letters(broker_url, prefix) == {late.id: "revoked"}
    assert ("start", "late") not in set(ledger(tmp_path, prefix))


def test_terminate_cancels_an_async_task_and_stops_a_sync_task_that_checks(
    app: App, prefix: str, worker_factory: WorkerFactory, broker_url: str, tmp_path: Path
) -> None:
    from tests.apps.control_app import async_sleep, checking

    start(worker_factory, prefix, "--threads", "2")
    slow_async = async_sleep.delay("a", sleep_s=60)
    slow_sync = checking.delay("s")
    wait_until(lambda: {("start", "a"), ("start", "s")} <= set(ledger(tmp_path, prefix)), 20)
    app.control.revoke([slow_async.id, slow_sync.id], terminate=True)
    amqp.wait_depth(broker_url, f"{prefix}.main.dlq", 2, timeout_s=15)
    assert dead_letters(broker_url, prefix) == {slow_async.id: "terminated", slow_sync.id: "terminated"}
    assert ("cancelled", "a") in ledger(tmp_path, prefix)
    assert not {("done", "a"), ("done", "s")} & set(ledger(tmp_path, prefix))


def test_terminate_replaces_a_child_whose_sync_task_never_checks_and_loses_nothing_else(
    app: App, prefix: str, worker_factory: WorkerFactory, broker_url: str, tmp_path: Path
) -> None:
    from tests.apps.control_app import record

    worker = start(worker_factory, prefix)
    (child,) = worker.children()
    stuck = record.delay("stuck", sleep_s=30)
    wait_until(lambda: ("start", "stuck") in ledger(tmp_path, prefix), 20)
    others = [record.delay(f"other-{i}") for i in range(5)]  # prefetched behind it by the same child
    app.control.revoke(stuck.id, terminate=True)
    # After the grace period (1 s in the test app) the message is dead-lettered and the child replaced
    amqp.wait_depth(broker_url, f"{prefix}.main.dlq", 1, timeout_s=15)
    assert dead_letters(broker_url, prefix) == {stuck.id: "terminated"}
    wait_until(lambda: child not in worker.children() and len(worker.children()) == 1, 20)
    # and every other task still runs, once
    wait_until(lambda: {("done", f"other-{i}") for i in range(5)} <= set(ledger(tmp_path, prefix)), 30)
    done = [tag for event, tag in ledger(tmp_path, prefix) if event == "done"]
    assert sorted(done) == sorted(f"other-{i}" for i in range(5))
    assert len(others) == 5


def test_with_signing_on_an_unsigned_control_message_is_ignored_and_logged(
    app: App, prefix: str, worker_factory: WorkerFactory, broker_url: str, tmp_path: Path
) -> None:
    keys = json.dumps({"k1": "a-secret-of-enough-length"})
    worker = worker_factory(APP, "-c", "1", prefix=prefix, env={"RABBITTASK_SIGNING_KEYS": keys})
    worker.wait_for_children(1)
    wait_until(lambda: "consuming from" in worker.log(), 20, lambda: worker.log()[-3000:])
    signed = App(
        "control-tests",
        exchange=prefix,
        signing_keys={"k1": "a-secret-of-enough-length"},
        signing_key_id="k1",
        events_heartbeat_s=0.5,
    )
    try:
        # An unsigned ping is not answered (and the child says why); a signed one is
        unsigned = app.control.ping(timeout=1.0)
        assert unsigned.replies == {} and len(unsigned.missing) == 1
        wait_until(lambda: "ignored a control command that is not authentic" in worker.log(), 10)
        assert list(signed.control.ping(timeout=1.0).replies.values()) == ["pong"]

        # An unsigned revocation is ignored: the task runs
        @signed.task(name="ctl.record", queue=f"{prefix}.main")
        def record(tag: str, sleep_s: float = 0.0) -> None: ...

        app.control.revoke(f"kept-{prefix}")
        wait_until(lambda: "ignored a revocation that is not authentic" in worker.log(), 10)
        record.apply_async(args=("kept",), message_id=f"kept-{prefix}")
        wait_until(lambda: ("done", "kept") in ledger(tmp_path, prefix), 20)
        # A signed one is obeyed (revoked before it is sent: an id chosen up front)
        signed.control.revoke(f"gone-{prefix}")
        gone = record.apply_async(args=("gone",), message_id=f"gone-{prefix}")
        amqp.wait_depth(broker_url, f"{prefix}.main.dlq", 1, timeout_s=20)
        assert dead_letters(broker_url, prefix) == {gone.id: "revoked"}
    finally:
        signed.close()


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rabbittask", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_cli_inspect_ping_json_names_every_child_and_cli_revoke_revokes(
    app: App, prefix: str, worker_factory: WorkerFactory, broker_url: str, tmp_path: Path
) -> None:
    from tests.apps.control_app import record

    worker = start(worker_factory, prefix, children=2)
    env = worker_env(broker_url, {"RT_TEST_PREFIX": prefix, "RT_TEST_LEDGER": str(tmp_path)})
    out = cli("inspect", "ping", "-A", APP, "--json", "--timeout", "1", env=env)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    host = os.uname().nodename
    assert set(data["replies"]) == {f"{host}:{pid}" for pid in worker.children()} and data["missing"] == []
    one = cli("inspect", "ping", "-A", APP, "--destination", f"{host}:{worker.children()[0]}", "--json", env=env)
    assert list(json.loads(one.stdout)["replies"]) == [f"{host}:{worker.children()[0]}"]
    bad = cli("inspect", "ping", "-A", APP, "--destination", "nohost", env=env)
    assert bad.returncode == 2 and "name workers as host:pid" in bad.stderr

    # Revoked before it is sent (an id chosen up front): the revoke holds whatever the CLI's start-up takes
    task_id = f"cli-{prefix}"
    out = cli("revoke", task_id, "-A", APP, env=env)
    assert out.returncode == 0 and "revoked 1 task(s)" in out.stdout, out.stderr
    handle = record.apply_async(args=("cli",), message_id=task_id)
    amqp.wait_depth(broker_url, f"{prefix}.main.dlq", 1, timeout_s=20)
    assert dead_letters(broker_url, prefix) == {handle.id: "revoked"}
    assert_stays(lambda: ("start", "cli") not in ledger(tmp_path, prefix), 1.0)


def test_bad_control_calls_say_what_is_wrong(app: App) -> None:
    from rabbittask.errors import ControlError

    with pytest.raises(ControlError, match="revoke takes task ids"):
        app.control.revoke("")
    with pytest.raises(ControlError, match="unknown control command 'pong'; known: ping"):
        app.control.broadcast("pong")
    with pytest.raises(ControlError, match="timeout must be more than 0 s"):
        app.control.ping(timeout=0)


def test_nothing_answers_when_no_worker_runs(app: App) -> None:
    replies: Any = app.control.ping(timeout=0.3)
    assert replies.replies == {} and replies.missing == []


def test_autoscale_grows_to_its_maximum_under_a_backlog_shrinks_when_idle_and_loses_nothing(
    app: App, prefix: str, worker_factory: WorkerFactory, tmp_path: Path
) -> None:
    from tests.apps.control_app import record

    # Given a worker that may run 1 to 4 children, each holding at most 2 messages
    worker = start(worker_factory, prefix, "--autoscale", "4,1", "--prefetch", "2")
    # When a backlog of slow tasks comes, it grows to 4 children
    tags = [f"slow-{i}" for i in range(40)]
    with app.batch():
        for tag in tags:
            record.delay(tag, sleep_s=0.5)
    worker.wait_for_children(4, timeout_s=30)
    # And once the backlog is done and the children are idle, it shrinks back to 1
    wait_until(lambda: {("done", t) for t in tags} <= set(ledger(tmp_path, prefix)), 60)
    worker.wait_for_children(1, timeout_s=30)
    # Nothing lost, nothing run twice
    done = sorted(tag for event, tag in ledger(tmp_path, prefix) if event == "done")
    assert done == sorted(tags)


def test_pool_grow_and_shrink_resize_a_running_worker(app: App, prefix: str, worker_factory: WorkerFactory) -> None:
    from rabbittask.errors import ControlError

    worker = start(worker_factory, prefix)
    replies = app.control.pool_grow(2)
    assert any("passed to the supervisor" in r for r in replies.replies.values()), replies
    worker.wait_for_children(3)
    app.control.pool_shrink(1)
    worker.wait_for_children(2)
    with pytest.raises(ControlError, match="pool_grow takes a whole number of children of 1 or more, not 0"):
        app.control.pool_grow(0)
