"""Retries, countdown/eta, expiry and delivery limits against a real broker and real worker processes.

Each test module gets its own exchange, hence its own delay ladder, deleted at the end; each test its
own queues. Timing claims are checked against the ledger the test app writes (one line per run).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pika
import pytest
from click.testing import CliRunner

from rabbittask import App
from rabbittask.cli import main as cli
from rabbittask.message import format_time
from tests import amqp
from tests.apps.retries_app import make_app
from tests.retries import APP, runs, wait_runs
from tests.waiting import assert_stays, wait_until
from tests.workers import WorkerProcess


@pytest.fixture(scope="module")
def exchange(broker_url: str) -> Iterator[str]:
    name = f"rt-retries-{uuid.uuid4().hex[:8]}"
    yield name
    amqp.delete_ladder(broker_url, name)


@pytest.fixture
def prefix(unique_name: str, amqp_cleanup: object) -> str:
    for q in ("main", "classic"):
        amqp_cleanup.queue(f"{unique_name}.{q}")  # type: ignore[attr-defined]
        amqp_cleanup.queue(f"{unique_name}.{q}.dlq")  # type: ignore[attr-defined]
    return unique_name


@pytest.fixture
def app(prefix: str, exchange: str, broker_url: str) -> Iterator[App]:
    app = make_app(prefix, exchange, broker_url)
    yield app
    app.close()


@pytest.fixture
def start_worker(worker_factory, prefix: str, exchange: str):
    def start(*args: str, ready: bool = True, **env: str) -> WorkerProcess:
        w: WorkerProcess = worker_factory(APP, *args, prefix=prefix, env={"RT_TEST_EXCHANGE": exchange, **env})
        if ready:
            w.wait_for_log("consuming from")
        return w

    return start


def within_policy(actual_s: float, expected_s: float) -> bool:
    """Never early; at most 10 % + 200 ms late."""
    return expected_s - 0.005 <= actual_s <= expected_s * 1.1 + 0.2


def test_a_task_failing_twice_then_succeeding_runs_three_times_on_its_backoff_schedule(
    app: App, prefix: str, start_worker, tmp_path: Path, broker_url: str
) -> None:
    # Given a worker, and a task with max_retries=3 and a 0.5 s exponential back-off (no jitter)
    start_worker()
    # When it fails on its first two runs
    app.tasks["retries.flaky"].delay("f", 2)
    wait_runs(tmp_path, prefix, "flaky", 3)
    assert_stays(lambda: len(runs(tmp_path, prefix, "flaky")) == 3, 0.5, "no fourth run")
    # Then it ran exactly three times, as attempts 1, 2, 3, waiting 0.5 s and then 1 s between them
    got = runs(tmp_path, prefix, "flaky")
    assert [a for _, a, _ in got] == [1, 2, 3]
    waits = [round(got[1][2] - got[0][2], 3), round(got[2][2] - got[1][2], 3)]
    assert within_policy(waits[0], 0.5) and within_policy(waits[1], 1.0), waits
    assert amqp.depth(broker_url, f"{prefix}.main.dlq") == 0


def test_a_1s_countdown_sent_after_a_60s_one_still_runs_after_about_1s(
    app: App, prefix: str, start_worker, tmp_path: Path
) -> None:
    start_worker()
    record = app.tasks["retries.record"]
    record.apply_async(("slow",), countdown=60)
    sent = time.time()
    record.apply_async(("fast",), countdown=1)
    ((tag, _, started),) = wait_runs(tmp_path, prefix, "record", 1, timeout_s=5)
    assert tag == "fast" and within_policy(started - sent, 1.0), started - sent
    assert [t for t, _, _ in runs(tmp_path, prefix, "record")] == ["fast"]  # the 60 s one waits its turn


def test_eta_runs_at_the_given_time_and_a_past_eta_runs_now(
    app: App, prefix: str, start_worker, tmp_path: Path
) -> None:
    start_worker()
    record = app.tasks["retries.record"]
    eta = datetime.now(UTC) + timedelta(seconds=1.2)
    record.apply_async(("at-eta",), eta=eta)
    record.apply_async(("past",), eta=datetime.now(UTC) - timedelta(hours=1))
    got = {tag: t for tag, _, t in wait_runs(tmp_path, prefix, "record", 2)}
    assert got["past"] < eta.timestamp()
    assert within_policy(got["at-eta"] - (eta.timestamp() - 1.2), 1.2)


def test_after_max_retries_the_message_is_in_the_dlq_with_its_reasons_and_replay_runs_it_again(
    app: App, prefix: str, start_worker, tmp_path: Path, broker_url: str
) -> None:
    # Given a task that fails every time it runs (until it is "healed" after three runs)
    w = start_worker(RT_TEST_HEAL="1")
    handle = app.tasks["retries.always_fails"].delay("x")
    # When its two retries are used up
    amqp.wait_depth(broker_url, f"{prefix}.main.dlq", 1)
    assert len(runs(tmp_path, prefix, "always_fails")) == 3
    # Then the dead letter says why, where, when and how often
    ((props, body),) = peek_all(broker_url, f"{prefix}.main.dlq")
    h = props.headers
    assert props.message_id == handle.id and props.type == "retries.always_fails"
    assert h["rt-reason"] == "max retries exceeded" and h["rt-exc-type"] == "Flaky"
    assert h["rt-exc-message"] == "still broken: x" and "raise Flaky" in h["rt-traceback"]
    assert h["rt-attempt"] == 3 and h["rt-queue"] == f"{prefix}.main"
    assert int(h["rt-worker"].rsplit(":", 1)[1]) in w.children()  # a child of the supervisor ran it
    assert h["rt-first-seen"] < h["rt-failed-at"]
    assert "x-death" not in h and json.loads(body) == {"v": 1, "args": ["x"], "kwargs": {}}
    # And `dlq ls` lists it
    env = {"RABBITTASK_BROKER_URL": broker_url, "RABBITTASK_EXCHANGE": app.settings.exchange, "COLUMNS": "200"}
    listing = CliRunner().invoke(cli, ["dlq", "ls", "-Q", f"{prefix}.main"], env=env)
    assert listing.exit_code == 0, listing.output
    row = next(line for line in listing.output.splitlines() if handle.id in line)
    assert [c.strip() for c in row.strip("│ ").split("│")] == [
        handle.id,
        "retries.always_fails",
        "max retries exceeded: Flaky",
        "3",
        row.split("│")[-2].strip(),
    ]
    assert row.split("│")[-2].strip().endswith("s")  # age in seconds
    # When it is replayed (the task is healed by now)
    replayed = CliRunner().invoke(cli, ["dlq", "replay", "-Q", f"{prefix}.main"], env=env)
    assert replayed.exit_code == 0 and f"replayed 1 message(s) from {prefix}.main.dlq" in replayed.output
    # Then it runs once more, from attempt 1, and succeeds
    got = wait_runs(tmp_path, prefix, "always_fails", 4)
    amqp.wait_depth(broker_url, f"{prefix}.main", 0)
    assert_stays(lambda: len(runs(tmp_path, prefix, "always_fails")) == 4, 0.3, "no fifth run")
    assert [a for _, a, _ in runs(tmp_path, prefix, "always_fails")] == [1, 2, 3, 1] == [a for _, a, _ in got]
    assert amqp.depth(broker_url, f"{prefix}.main.dlq") == 0


def peek_all(url: str, queue: str) -> list[tuple[pika.BasicProperties, bytes]]:
    """Every message of `queue`, left in place."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        out = []
        while True:
            method, props, body = channel.basic_get(queue)
            if method is None:
                break
            out.append((props, body))
        channel.basic_nack(0, multiple=True, requeue=True)
        return out
    finally:
        connection.close()


def test_an_explicit_retry_from_a_bound_async_task_counts_attempts_and_takes_its_countdown(
    app: App, prefix: str, start_worker, tmp_path: Path
) -> None:
    start_worker()
    app.tasks["retries.explicit"].delay("e", 0.3, 2)
    got = wait_runs(tmp_path, prefix, "explicit", 3)
    assert [a for _, a, _ in got] == [1, 2, 3]
    assert all(within_policy(b[2] - a[2], 0.3) for a, b in zip(got, got[1:], strict=False))


def test_an_expired_task_is_dead_lettered_without_running(
    app: App, prefix: str, start_worker, tmp_path: Path, broker_url: str
) -> None:
    w = start_worker()
    record = app.tasks["retries.record"]
    gone = record.apply_async(("too-late",), countdown=0.6, expires=0.2)
    record.apply_async(("in-time",), expires=30)
    amqp.wait_depth(broker_url, f"{prefix}.main.dlq", 1)
    ((props, _),) = peek_all(broker_url, f"{prefix}.main.dlq")
    assert props.message_id == gone.id and props.headers["rt-reason"] == "expired"
    assert [t for t, _, _ in runs(tmp_path, prefix, "record")] == ["in-time"]
    assert f"[{gone.id}] dead-lettered to {prefix}.main.dlq without running (expired)" in w.log()


def test_a_deadline_the_worker_cannot_read_is_dead_lettered_not_ignored(
    app: App, prefix: str, start_worker, tmp_path: Path, broker_url: str
) -> None:
    # Given producers that set rt-expires as epoch seconds in text, as junk, as a table, and rt-eta as junk
    w = start_worker()
    bad: dict[str, object] = {
        "epoch-text": {"rt-expires": str(int(time.time()) - 60)},
        "junk": {"rt-expires": "not-a-date"},
        "table": {"rt-expires": {"at": 1}},
        "eta-junk": {"rt-eta": "soon"},
    }
    for tag, headers in bad.items():
        amqp.publish_raw(
            broker_url,
            f"{prefix}.main",
            b'{"v":1,"args":["%s"],"kwargs":{}}' % tag.encode(),
            exchange=app.settings.exchange,
            content_type="application/json",
            type="retries.record",
            message_id=f"bad-{tag}",
            headers=headers,
        )
    # When a good message follows them
    app.tasks["retries.record"].delay("good")
    # Then none of the bad ones ran: each is in the DLQ saying which header could not be read, and why
    amqp.wait_depth(broker_url, f"{prefix}.main.dlq", len(bad))
    dead = {props.message_id: props.headers for props, _ in peek_all(broker_url, f"{prefix}.main.dlq")}
    assert set(dead) == {f"bad-{tag}" for tag in bad}
    assert all(h["rt-reason"] == "malformed message" for h in dead.values())
    assert "header rt-expires '" in dead["bad-epoch-text"]["rt-exc-message"]
    assert "epoch seconds must be sent as an AMQP number, not as text" in dead["bad-epoch-text"]["rt-exc-message"]
    assert "header rt-expires 'not-a-date' (str) cannot be read as a time" in dead["bad-junk"]["rt-exc-message"]
    assert "header rt-eta 'soon' (str) cannot be read as a time" in dead["bad-eta-junk"]["rt-exc-message"]
    wait_runs(tmp_path, prefix, "record", 1)
    assert [t for t, _, _ in runs(tmp_path, prefix, "record")] == ["good"]
    assert "[bad-junk] dead-lettered to" in w.log()


def test_a_message_due_beyond_one_ladder_pass_is_parked_again_until_its_eta(
    app: App, prefix: str, start_worker, tmp_path: Path, broker_url: str
) -> None:
    # A producer (or the end of a ~78-day pass) hands the queue a message whose rt-eta is still ahead
    w = start_worker()
    eta = time.time() + 1.0
    amqp.publish_raw(
        broker_url,
        f"{prefix}.main",
        b'{"v":1,"args":["parked"],"kwargs":{}}',
        exchange=app.settings.exchange,
        content_type="application/json",
        type="retries.record",
        message_id="parked-1",
        headers={"rt-eta": format_time(eta)},
    )
    ((_, _, started),) = wait_runs(tmp_path, prefix, "record", 1)
    assert eta <= started <= eta + 0.4
    assert "[parked-1] re-published (not due)" in w.log()


def test_classic_task_queues_retry_through_the_ladder_too(app: App, prefix: str, start_worker, tmp_path: Path) -> None:
    start_worker()
    app.tasks["retries.classic_flaky"].delay("c")
    got = wait_runs(tmp_path, prefix, "classic_flaky", 2)
    assert within_policy(got[1][2] - got[0][2], 0.2)


@pytest.mark.parametrize("task", ["retries.crash", "retries.classic_crash"])
def test_a_message_that_kills_its_worker_every_time_ends_in_the_dlq_after_the_delivery_limit(
    app: App, prefix: str, start_worker, tmp_path: Path, broker_url: str, task: str
) -> None:
    # Given a task that kills the worker process running it, on a quorum or a classic queue (limit 3)
    queue = app.tasks[task].queue
    handle = app.tasks[task].delay("poison")
    # When workers keep being restarted (as a supervisor would)
    for _ in range(6):
        w = start_worker(ready=False)
        wait_until(
            lambda w=w: w.proc.poll() is not None or amqp.depth(broker_url, f"{queue}.dlq"),
            60,
            "the worker dies, or the message is dead-lettered",
        )
        if amqp.depth(broker_url, f"{queue}.dlq"):
            break
    else:
        pytest.fail("the poison message never reached the DLQ")
    # Then it ran three times, and the dead letter says it was delivered too often
    assert len(runs(tmp_path, prefix, task.removeprefix("retries."))) == 3
    ((props, _),) = peek_all(broker_url, f"{queue}.dlq")
    assert props.message_id == handle.id and props.headers["rt-reason"] == "delivery limit"
    assert "delivered 3 time(s) without being settled (limit 3)" in props.headers["rt-exc-message"]
    assert amqp.depth(broker_url, queue) == 0


def test_a_classic_delay_ladder_delivers_too(prefix: str, worker_factory, broker_url: str, tmp_path: Path) -> None:
    exchange = f"rt-retries-classic-{uuid.uuid4().hex[:8]}"
    app = make_app(prefix, exchange, broker_url, delay_queue_type="classic")
    try:
        w = worker_factory(
            APP, prefix=prefix, env={"RT_TEST_EXCHANGE": exchange, "RT_TEST_DELAY_QUEUE_TYPE": "classic"}
        )
        w.wait_for_log("consuming from")
        sent = time.time()
        app.tasks["retries.record"].apply_async(("classic-ladder",), countdown=0.7)
        ((_, _, started),) = wait_runs(tmp_path, prefix, "record", 1)
        assert within_policy(started - sent, 0.7)
    finally:
        app.close()
        amqp.delete_ladder(broker_url, exchange)


def test_a_call_waits_through_the_retries_and_gets_the_final_result(
    app: App, prefix: str, start_worker, tmp_path: Path
) -> None:
    start_worker()
    # The retry copy keeps reply_to: only the run that finishes answers the caller
    assert app.tasks["retries.flaky"].call("rpc", 1, timeout=15) == "rpc"
    assert [a for _, a, _ in runs(tmp_path, prefix, "flaky")] == [1, 2]
