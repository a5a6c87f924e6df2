"""Events and status of a real worker run: task events and heartbeats on `<exchange>.events`, `status --json`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from rabbittask import App
from tests import amqp
from tests.apps.core import make_app
from tests.waiting import assert_stays, wait_until
from tests.workers import ROOT, WorkerFactory, worker_env

APP = "tests.apps.core:app"
EVENTS = "rabbittask.events"


@pytest.fixture
def prefix(unique_name: str, amqp_cleanup: Any) -> str:
    for q in ("main", "aio"):
        amqp_cleanup.queue(f"{unique_name}.{q}")
        amqp_cleanup.queue(f"{unique_name}.{q}.dlq")
    return unique_name


@pytest.fixture
def app(prefix: str, broker_url: str) -> Iterator[App]:
    app = make_app(prefix, broker_url)
    yield app
    app.close()


@pytest.fixture
def listener(broker_url: str) -> Iterator[tuple[pika.adapters.blocking_connection.BlockingChannel, str]]:
    """An exclusive queue bound to every event, as a monitoring consumer would bind it."""
    connection = amqp.connect(broker_url)
    channel = connection.channel()
    channel.exchange_declare(EVENTS, "topic", durable=True)
    queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
    channel.queue_bind(queue, EVENTS, "#")
    yield channel, queue
    connection.close()


def read_events(
    channel: pika.adapters.blocking_connection.BlockingChannel, queue: str, pids: set[int]
) -> list[tuple[str, dict[str, Any]]]:
    """(routing key, body) of every message waiting in `queue` sent by one of `pids`."""
    out = []
    while True:
        method, _, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        data = json.loads(body)
        if data["pid"] in pids:
            out.append((method.routing_key, data))


def test_a_worker_run_emits_task_events_and_heartbeats(
    app: App, prefix: str, worker_factory: WorkerFactory, listener: Any
) -> None:
    channel, queue = listener
    # Given a worker with two children
    w = worker_factory(APP, "-c", "2", prefix=prefix)
    w.wait_for_log("consuming from", count=2)
    pids = set(w.wait_for_children(2))
    # When 20 tasks succeed and one is rejected (dead-lettered)
    ok_ids = {app.tasks["core.add"].delay(i, 1).id for i in range(20)}  # type: ignore[attr-defined]
    failed_id = app.tasks["core.reject"].delay("no").id  # type: ignore[attr-defined]
    # Then the events say so, one per task, and the heartbeats count them
    seen: list[tuple[str, dict[str, Any]]] = []

    def heartbeats() -> dict[int, dict[str, Any]]:  # the latest of each child
        return {b["pid"]: b for key, b in seen if key == "worker.heartbeat"}

    def counted() -> bool:
        seen.extend(read_events(channel, queue, pids))
        done = [e for key, b in seen if key.startswith("task.") for e in b["events"]]
        beats = heartbeats()
        return len(done) >= 21 and sum(b["done"] for b in beats.values()) == 21 and len(beats) == 2

    wait_until(counted, 15, lambda: f"21 task events and 2 children's heartbeats counting them: {seen}", interval_s=0.2)
    beats = heartbeats()
    succeeded = [e for key, b in seen if key == "task.succeeded.core.add" for e in b["events"]]
    failed = [e for key, b in seen if key == "task.failed.core.reject" for e in b["events"]]
    assert {e["id"] for e in succeeded} == ok_ids and len(succeeded) == 20
    assert all(e["state"] == "succeeded" and e["runtime_s"] >= 0 for e in succeeded)
    assert [(e["id"], e["reason"]) for e in failed] == [(failed_id, "rejected by task")]
    assert set(beats) == pids
    for beat in beats.values():
        assert beat["ppid"] == w.pid and beat["consuming"] is True and beat["app"] == "core-tests"
        assert set(beat["queues"]) == {f"{prefix}.main", f"{prefix}.aio"} and beat["uptime_s"] > 0
    assert sum(b["done"] for b in beats.values()) == 21
    assert sum(b["failed"] for b in beats.values()) == 1
    # When the worker stops, each child says it is going offline
    assert w.stop() == 0
    offline: set[int] = set()

    def said_offline() -> bool:
        offline.update(b["pid"] for key, b in read_events(channel, queue, pids) if key == "worker.offline")
        return offline == pids

    wait_until(said_offline, 5, lambda: f"worker.offline from {pids}, got {offline}")
    assert offline == pids


def test_received_started_failed_and_dead_lettered_events_carry_what_a_dashboard_shows(
    app: App, prefix: str, broker_url: str, worker_factory: WorkerFactory, listener: Any
) -> None:
    channel, queue = listener
    # Given a worker that also sends received and started events
    env = {"RABBITTASK_EVENTS_RECEIVED": "true", "RABBITTASK_EVENTS_STARTED": "true"}
    w = worker_factory(APP, prefix=prefix, env=env)
    w.wait_for_log("consuming from")
    pids = set(w.wait_for_children(1))
    # When a sync and an async task succeed, one raises, and a message with bad arguments arrives
    sent = time.time()
    ok = app.tasks["core.add"].delay(1, 2).id  # type: ignore[attr-defined]
    aok = app.tasks["core.amul"].delay(2, 3).id  # type: ignore[attr-defined]
    boom = app.tasks["core.boom"].delay("disk full").id  # type: ignore[attr-defined]
    amqp.publish_raw(
        broker_url,
        f"{prefix}.main",
        b'{"v":1,"args":["x","y"],"kwargs":{}}',
        message_id="bad-1",
        type="core.add",
        content_type="application/json",
    )
    amqp.wait_depth(broker_url, f"{prefix}.main.dlq", 2)
    events: dict[str, list[dict[str, Any]]] = {}

    def settled() -> bool:
        for key, body in read_events(channel, queue, pids):
            if key.startswith("task."):
                for e in body["events"]:
                    assert key == f"task.{e['state']}.{e['task']}"
                    events.setdefault(e["state"], []).append(e)
        return len(events.get("dead-lettered", ())) >= 2 and len(events.get("succeeded", ())) >= 2

    wait_until(settled, 10, lambda: f"2 dead-lettered and 2 succeeded events: {events}", interval_s=0.2)
    # Then each message was received and started (with the time), and settled once
    every = {ok, aok, boom, "bad-1"}
    assert {e["id"] for e in events["received"]} == every
    assert {e["id"] for e in events["started"]} == every
    assert all(sent - 1 < e["ts"] < time.time() for e in events["received"] + events["started"])
    assert {e["id"] for e in events["succeeded"]} == {ok, aok}
    # the failure carries its type, message and traceback, and the task ends in the DLQ as well
    [failed] = events["failed"]
    assert (failed["id"], failed["exc_type"], failed["exc_message"]) == (boom, "ValueError", "boom: disk full")
    assert "Traceback (most recent call last)" in failed["traceback"]
    assert failed["traceback"].rstrip().endswith("ValueError: boom: disk full")
    dead = {e["id"]: e for e in events["dead-lettered"]}
    assert set(dead) == {boom, "bad-1"}
    assert dead["bad-1"]["reason"] == "invalid arguments" and "traceback" not in dead["bad-1"]
    assert "bad-1" not in {e["id"] for e in events["failed"]}  # it never ran
    assert w.stop() == 0


def test_no_events_are_sent_when_turned_off(
    app: App, prefix: str, worker_factory: WorkerFactory, listener: Any
) -> None:
    channel, queue = listener
    w = worker_factory(APP, prefix=prefix, env={"RABBITTASK_EVENTS": "false"})
    w.wait_for_log("consuming from")
    pids = set(w.wait_for_children(1))
    app.tasks["core.add"].delay(1, 2)
    amqp.wait_depth(app.settings.broker_url, f"{prefix}.main", 0)
    # for longer than a flush and a heartbeat interval
    assert_stays(lambda: read_events(channel, queue, pids) == [], 2.5, "no event and no heartbeat", interval_s=0.2)
    assert w.stop() == 0
    assert read_events(channel, queue, pids) == []


def status(broker_url: str, prefix: str, tmp_path: Path) -> tuple[int, dict[str, Any]]:
    env = worker_env(broker_url, {"RT_TEST_PREFIX": prefix, "RT_TEST_LEDGER": str(tmp_path)})
    run = subprocess.run(
        [sys.executable, "-m", "rabbittask", "status", "-A", APP, "--json"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.stdout, run.stderr
    return run.returncode, json.loads(run.stdout)


def test_status_json_counts_the_tasks_of_a_live_worker(
    app: App, prefix: str, broker_url: str, worker_factory: WorkerFactory, tmp_path: Path
) -> None:
    # Given a worker with two children that ran 25 tasks, 2 of them dead-lettered
    w = worker_factory(APP, "-c", "2", prefix=prefix)
    w.wait_for_log("consuming from", count=2)
    pids = w.wait_for_children(2)
    for i in range(23):
        app.tasks["core.add"].delay(i, i)
    for _ in range(2):
        app.tasks["core.reject"].delay("no")
    amqp.wait_depth(broker_url, f"{prefix}.main.dlq", 2)
    amqp.wait_depth(broker_url, f"{prefix}.main", 0)

    # When `status --json` runs (again until the heartbeats it hears are from after the last events' flush)
    def counts_all() -> tuple[int, dict[str, Any]] | None:
        code, data = status(broker_url, prefix, tmp_path)
        return (code, data) if [(x["done"], x["failed"]) for x in data["workers"]] == [(25, 2)] else None

    code, data = wait_until(counts_all, 20, "`status --json` counts 25 tasks done, 2 failed", interval_s=0.2)
    # Then it shows the worker with its children and counts, and the queues with their consumers
    assert code == 0, data
    [worker] = data["workers"]
    assert (worker["pid"], worker["children"], sorted(worker["child_pids"])) == (w.pid, 2, sorted(pids))
    assert (worker["done"], worker["failed"], worker["consuming"]) == (25, 2, True)
    assert worker["queues"] == sorted([f"{prefix}.main", f"{prefix}.aio"])
    queues = {q["name"]: q for q in data["queues"]}
    assert queues[f"{prefix}.main"] | {"unacked": None} == {
        "name": f"{prefix}.main",
        "exists": True,
        "ready": 0,
        "unacked": None,  # both queues share the children: their in-flight count is not split by queue
        "consumers": 2,
        "dlq": f"{prefix}.main.dlq",
        "dlq_ready": 2,
    }
    assert queues[f"{prefix}.aio"]["consumers"] == 2 and data["queues_without_consumers"] == []
    # When the worker is gone, status exits non-zero and names the queues nobody consumes
    assert w.stop() == 0
    code, data = status(broker_url, prefix, tmp_path)
    assert code == 1
    assert data["workers"] == []
    assert sorted(data["queues_without_consumers"]) == sorted([f"{prefix}.main", f"{prefix}.aio"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def sample(metrics: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in metrics.splitlines():
        if line.startswith(f"{name}{{{wanted}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_100_tasks_summed_over_children_and_probes_answer(
    app: App, prefix: str, broker_url: str, worker_factory: WorkerFactory
) -> None:
    # Given a worker with two children serving metrics
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    w = worker_factory(APP, "-c", "2", "--metrics-port", str(port), "--metrics-host", "127.0.0.1", prefix=prefix)
    w.wait_for_log("consuming from", count=2)
    wait_until(lambda: get(f"{base}/readyz")[0] == 200, 10, "ready", interval_s=0.1)
    assert get(f"{base}/healthz") == (200, "ok\n")
    # When 100 tasks succeed and 3 are rejected
    for i in range(100):
        app.tasks["core.add"].delay(i, 1)
    for _ in range(3):
        app.tasks["core.reject"].delay("no")
    amqp.wait_depth(broker_url, f"{prefix}.main.dlq", 3)

    # Then /metrics shows the counts, summed over both children, once their events flushed
    def succeeded() -> float:
        return sample(get(f"{base}/metrics")[1], "rabbittask_tasks_total", task="core.add", state="succeeded")

    wait_until(lambda: succeeded() == 100, 10, lambda: f"100 succeeded in /metrics, not {succeeded()}", interval_s=0.2)
    status_code, text = get(f"{base}/metrics")
    assert status_code == 200
    assert sample(text, "rabbittask_tasks_total", task="core.add", state="succeeded") == 100
    assert sample(text, "rabbittask_tasks_total", task="core.reject", state="failed") == 3
    assert sample(text, "rabbittask_task_runtime_seconds_count", task="core.add") == 100
    # the 3 dead letters went out with confirms, which were timed; no connection was lost
    assert sample(text, "rabbittask_publish_confirm_seconds_count") == 3
    assert 0 < sample(text, "rabbittask_publish_confirm_seconds_sum") < 3 * 5.0
    assert "rabbittask_reconnects_total 0.0" in text.splitlines()
    assert get(f"{base}/nope")[0] == 404
    # When a task runs for a while, the in-flight gauge shows it (sampled once a second), then drops to 0
    app.tasks["core.record"].delay("slow", 1.5)

    def in_flight_becomes(value: float) -> None:
        def in_flight() -> float:
            return sample(get(f"{base}/metrics")[1], "rabbittask_tasks_in_flight")

        wait_until(lambda: in_flight() == value, 5, f"in-flight {value}", interval_s=0.1)

    in_flight_becomes(1)
    in_flight_becomes(0)
    # When a child is killed, /readyz says 503 until its successor consumes, and the restart is counted
    codes: list[int] = []
    os.kill(w.children()[0], signal.SIGKILL)

    def ready_again() -> bool:
        codes.append(get(f"{base}/readyz")[0])
        return codes[-1] == 200 and 503 in codes

    wait_until(ready_again, 10, lambda: f"readyz answered {codes}", interval_s=0.02)
    w.wait_for_log("consuming from", count=3)
    text = get(f"{base}/metrics")[1]
    assert sample(text, "rabbittask_child_restarts_total", reason="crashed") == 1
    assert sample(text, "rabbittask_tasks_total", task="core.add", state="succeeded") == 100  # the dead child's stay
    assert w.stop() == 0


def test_readyz_is_unready_while_no_consumer_is_attached(prefix: str, worker_factory: WorkerFactory) -> None:
    # Given a worker whose broker does not answer (nothing listens on that port)
    port, dead_broker = free_port(), f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    base = f"http://127.0.0.1:{port}"
    w = worker_factory(
        APP, "--metrics-port", str(port), "--metrics-host", "127.0.0.1", prefix=prefix, broker_url=dead_broker
    )
    health = wait_until(lambda: get(f"{base}/healthz"), 10, "the metrics port opens", ignoring=(OSError,))
    # Then the process is alive but not ready, for as long as its child cannot consume
    w.wait_for_log("reconnecting in")
    assert health == (200, "ok\n")
    assert get(f"{base}/readyz") == (503, "not ready\n")
    assert w.stop() == 0


def close_worker_connections(prefix: str) -> int:
    """Close (as the broker would on a node problem) the consuming connections of the worker on `prefix`."""
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties", "--no-table-headers"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    closed = 0
    for line in listed.splitlines():
        pid, _, name = line.partition("\t")
        if "rabbittask worker q=" in name and prefix in name:
            subprocess.run(["rabbitmqctl", "-q", "close_connection", pid.strip(), "test"], timeout=60, check=True)
            closed += 1
    return closed


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl of the local broker")
def test_readyz_turns_unready_when_the_connection_is_lost_and_ready_again_after(
    app: App, prefix: str, broker_url: str, worker_factory: WorkerFactory
) -> None:
    port = free_port()
    readyz = f"http://127.0.0.1:{port}/readyz"
    w = worker_factory(APP, "--metrics-port", str(port), "--metrics-host", "127.0.0.1", prefix=prefix)
    w.wait_for_log("consuming from")
    wait_until(lambda: get(readyz)[0] == 200, 10, "ready")
    # When the broker closes the worker's consuming connection, /readyz says 503 until it consumes again
    codes: list[int] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            codes.append(get(readyz)[0])
            time.sleep(0.02)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        assert close_worker_connections(prefix) == 1
        w.wait_for_log("consuming from", count=2)
        wait_until(lambda: codes[-1:] == [200], 5, lambda: f"readyz back to 200: {codes[-20:]}")
    finally:
        stop.set()
        prober.join()
    assert 503 in codes
    assert codes[-1] == 200 and codes.index(503) < len(codes) - 1

    # and the child counted the reconnect (sampled once a second)
    def reconnects() -> float:
        return sample(get(f"http://127.0.0.1:{port}/metrics")[1], "rabbittask_reconnects_total")

    wait_until(lambda: reconnects() == 1, 5, lambda: f"reconnects counted once, not {reconnects()}", interval_s=0.1)
