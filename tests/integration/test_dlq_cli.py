"""`rabbittask dlq ls/show/replay/purge` against a real broker; dead letters are seeded with raw pika."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pika
import pytest
from click.testing import CliRunner, Result

from rabbittask.cli import main as cli
from rabbittask.message import format_time
from tests import amqp
from tests.waiting import wait_until

EXCHANGE = "rabbittask"  # only bindings of this test's own queues are added to it


@pytest.fixture
def queue(unique_name: str, amqp_cleanup: Any, broker_url: str) -> Iterator[str]:
    """A quorum task queue bound to the exchange, and its DLQ holding three dead letters."""
    q, dlq = amqp_cleanup.queue(unique_name), amqp_cleanup.queue(f"{unique_name}.dlq")
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.exchange_declare(EXCHANGE, "direct", durable=True)
    channel.queue_declare(q, durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_bind(q, EXCHANGE, q)
    channel.queue_declare(dlq, durable=True, arguments={"x-queue-type": "quorum"})
    for i, reason in enumerate(["max retries exceeded", "expired", None]):
        headers: dict[str, Any] = {"rt-attempt": 4, "rt-first-seen": format_time(1), "x-delivery-count": 2}
        if reason:
            headers |= {"rt-reason": reason, "rt-failed-at": format_time(time.time() - 90), "rt-worker": "host:1"}
        if i == 0:
            headers |= {"rt-exc-type": "SMTPError", "rt-exc-message": "451 try later", "rt-traceback": "Trace\n  boom"}
        else:  # dead-lettered by the broker: only x-death says why
            died = datetime.now(UTC) - timedelta(hours=2)
            headers["x-death"] = [{"reason": "rejected", "queue": q, "count": 1, "time": died}] if not reason else []
        channel.basic_publish(
            "",
            dlq,
            json.dumps({"v": 1, "args": [i], "kwargs": {}}).encode(),
            pika.BasicProperties(
                delivery_mode=2,
                message_id=f"m{i}",
                type="shop.send",
                content_type="application/json",
                headers=headers,
            ),
        )
    connection.close()
    yield q


def run(broker_url: str, *args: str, input: str | None = None, exchange: str | None = EXCHANGE) -> Result:
    env = {"RABBITTASK_BROKER_URL": broker_url, "RABBITTASK_EXCHANGE": exchange, "COLUMNS": "160"}
    return CliRunner().invoke(cli, ["dlq", *args], env=env, input=input)


def ids_in(broker_url: str, queue: str) -> list[str]:
    """Message ids of `queue` in order, left in place."""
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        channel = connection.channel()
        out = []
        while (got := channel.basic_get(queue))[0] is not None:
            out.append(got[1].message_id)
        channel.basic_nack(0, multiple=True, requeue=True)
        return out
    finally:
        connection.close()


def test_dlq_ls_shows_id_task_reason_attempts_and_age_and_leaves_the_queue_as_it_was(
    queue: str, broker_url: str
) -> None:
    result = run(broker_url, "ls", "-Q", queue)
    assert result.exit_code == 0, result.output
    rows = [[c.strip() for c in line.strip("│ ").split("│")] for line in result.output.splitlines() if "│" in line]
    assert rows == [
        ["m0", "shop.send", "max retries exceeded: SMTPError", "4", "1m"],
        ["m1", "shop.send", "expired", "4", "1m"],
        ["m2", "shop.send", "broker: rejected", "4", "2h"],  # dead-lettered by the broker: x-death says why
    ]
    assert f"{queue}.dlq: 3" in result.output  # the title (wrapped to the table width)
    assert ids_in(broker_url, f"{queue}.dlq") == ["m0", "m1", "m2"]
    limited = run(broker_url, "ls", "-Q", queue, "--limit", "2")
    assert "first 2" in limited.output and "m2" not in limited.output


def test_dlq_show_prints_reason_exception_traceback_headers_and_body(queue: str, broker_url: str) -> None:
    result = run(broker_url, "show", "m0", "-Q", queue)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "max retries exceeded" in out and "SMTPError: 451 try later" in out and "host:1" in out
    assert '"rt-attempt": 4' in out and '"args": [\n    0\n  ]' in out and "Trace\n  boom" in out
    missing = run(broker_url, "show", "nope", "-Q", queue)
    assert missing.exit_code == 1 and f"no message nope in {queue}.dlq" in missing.output
    assert ids_in(broker_url, f"{queue}.dlq") == ["m0", "m1", "m2"]


def test_dlq_replay_by_id_and_by_limit_sends_copies_with_attempts_reset_and_keeps_the_rest_in_order(
    queue: str, broker_url: str
) -> None:
    result = run(broker_url, "replay", "-Q", queue, "--id", "m1")
    assert result.exit_code == 0, result.output
    assert (
        f"replayed 1 message(s) from {queue}.dlq to {queue} through exchange 'rabbittask' (from RABBITTASK_EXCHANGE)"
        in result.output
    )
    assert ids_in(broker_url, f"{queue}.dlq") == ["m0", "m2"]
    ((props, body),) = amqp.get_all(broker_url, queue)
    assert props.message_id == "m1" and props.type == "shop.send" and json.loads(body)["args"] == [1]
    assert set(props.headers or {}) <= {"x-delivery-count"}  # the task queue's own; no rt-*, no x-death
    assert run(broker_url, "replay", "-Q", queue, "--limit", "1").exit_code == 0
    assert ids_in(broker_url, f"{queue}.dlq") == ["m2"] and [
        p.message_id for p, _ in amqp.get_all(broker_url, queue)
    ] == ["m0"]
    missing = run(broker_url, "replay", "-Q", queue, "--id", "m2", "--id", "gone")
    assert missing.exit_code == 1 and "not found in" in missing.output and "gone" in missing.output
    assert amqp.depth(broker_url, f"{queue}.dlq") == 0


def test_dlq_replay_never_acks_a_dead_letter_whose_copy_was_not_confirmed(queue: str, broker_url: str) -> None:
    # Given the task queue is no longer bound, so a copy would be unroutable
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    connection.channel().queue_unbind(queue, EXCHANGE, queue)
    connection.close()
    # When a replay runs, it fails, and every dead letter is still there, in order
    result = run(broker_url, "replay", "-Q", queue)
    assert result.exit_code == 1 and "was returned" in result.output and f"stays in {queue}.dlq" in result.output
    assert ids_in(broker_url, f"{queue}.dlq") == ["m0", "m1", "m2"]


def test_dlq_purge_asks_first_unless_yes(queue: str, broker_url: str) -> None:
    declined = run(broker_url, "purge", "-Q", queue, input="n\n")
    assert declined.exit_code == 1 and f"delete all 3 message(s) of {queue}.dlq?" in declined.output
    assert amqp.depth(broker_url, f"{queue}.dlq") == 3
    purged = run(broker_url, "purge", "-Q", queue, "--yes")
    assert purged.exit_code == 0 and f"purged 3 message(s) from {queue}.dlq" in purged.output
    assert amqp.depth(broker_url, f"{queue}.dlq") == 0


def test_dlq_commands_name_a_queue_that_does_not_exist(broker_url: str, unique_name: str) -> None:
    result = run(broker_url, "ls", "-Q", unique_name)
    assert result.exit_code == 1 and f"there is no queue '{unique_name}.dlq' on the broker" in result.output


def test_a_replay_killed_midway_loses_nothing(queue: str, broker_url: str) -> None:
    # Given a DLQ of 2,003 dead letters
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    channel = connection.channel()
    channel.confirm_delivery()
    for i in range(3, 2003):
        channel.basic_publish("", f"{queue}.dlq", b"{}", pika.BasicProperties(message_id=f"m{i}", type="shop.send"))
    connection.close()
    # When a replay is SIGKILLed while it runs
    env = {**os.environ, "RABBITTASK_BROKER_URL": broker_url, "RABBITTASK_EXCHANGE": EXCHANGE}
    proc = subprocess.Popen([sys.executable, "-m", "rabbittask", "dlq", "replay", "-Q", queue], env=env)
    try:
        wait_until(lambda: amqp.depth(broker_url, queue) >= 200, 20, "200 messages replayed", interval_s=0.01)
    finally:
        proc.kill()
        proc.wait(10)

    # Then every message is in the DLQ or in the task queue (one may be in both), none lost
    # (within 10 s: the broker requeues what the killed connection held)
    def held() -> int:
        return amqp.depth(broker_url, queue) + amqp.depth(broker_url, f"{queue}.dlq")

    wait_until(lambda: held() >= 2003, 10, lambda: f"messages are missing: {held()} of 2003 in the two queues")
    replayed = [p.message_id for p, _ in amqp.get_all(broker_url, queue)]
    left = [p.message_id for p, _ in amqp.get_all(broker_url, f"{queue}.dlq")]
    assert 200 <= len(replayed) < 2003, "the replay was not cut midway"
    assert set(replayed) | set(left) == {f"m{i}" for i in range(2003)}
    assert len(replayed) + len(left) - 2003 <= 1


def test_dlq_ls_json_gives_one_object_per_dead_letter_for_scripts(queue: str, broker_url: str) -> None:
    result = run(broker_url, "ls", "-Q", queue, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [(r["id"], r["reason"], r["exc_type"], r["attempts"]) for r in rows] == [
        ("m0", "max retries exceeded", "SMTPError", 4),
        ("m1", "expired", None, 4),
        ("m2", "broker: rejected", None, 4),
    ]
    assert rows[0]["queue"] == queue and rows[0]["dlq"] == f"{queue}.dlq" and rows[0]["worker"] == "host:1"
    assert 80 < rows[0]["age_s"] < 200


def test_dlq_commands_take_a_comma_list_of_queues_like_the_worker(
    queue: str, broker_url: str, unique_name: str, amqp_cleanup: Any
) -> None:
    # Given a second task queue whose DLQ holds one dead letter
    other = amqp_cleanup.queue(f"{unique_name}-b")
    amqp_cleanup.queue(f"{other}.dlq")
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    channel = connection.channel()
    channel.queue_declare(other, durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_bind(other, EXCHANGE, other)
    channel.queue_declare(f"{other}.dlq", durable=True, arguments={"x-queue-type": "quorum"})
    channel.basic_publish("", f"{other}.dlq", b"{}", pika.BasicProperties(message_id="b0", type="shop.other"))
    connection.close()
    # Then ls, show, replay and purge work on both
    listed = run(broker_url, "ls", "-Q", f"{queue}, {other}", "--json")
    assert [r["id"] for r in json.loads(listed.output)] == ["m0", "m1", "m2", "b0"]
    assert run(broker_url, "show", "b0", "-Q", f"{queue},{other}").exit_code == 0
    replayed = run(broker_url, "replay", "-Q", f"{queue},{other}", "--id", "b0", "--id", "m2")
    assert replayed.exit_code == 0, replayed.output
    assert [p.message_id for p, _ in amqp.get_all(broker_url, other)] == ["b0"]
    purged = run(broker_url, "purge", "-Q", f"{queue},{other}", "--yes")
    assert f"purged 2 message(s) from {queue}.dlq" in purged.output
    assert f"purged 0 message(s) from {other}.dlq" in purged.output


def test_dlq_replay_without_the_app_or_an_exchange_says_what_to_give(queue: str, broker_url: str) -> None:
    result = run(broker_url, "replay", "-Q", queue, exchange=None)
    assert result.exit_code == 2
    assert (
        "dlq replay sends the messages back through the app's task exchange: give the app with -A "
        "module:attribute (e.g. -A shop.tasks:app), or set RABBITTASK_EXCHANGE to its exchange"
    ) in " ".join(result.output.split())
    assert ids_in(broker_url, f"{queue}.dlq") == ["m0", "m1", "m2"]  # nothing was sent anywhere


def test_dlq_with_bad_settings_in_the_environment_names_the_variable(queue: str, broker_url: str) -> None:
    env = {"RABBITTASK_BROKER_URL": "localhost:5672"}
    result = CliRunner().invoke(cli, ["dlq", "ls", "-Q", queue], env=env)
    assert result.exit_code == 1
    assert "broker_url 'localhost:5672' is not an AMQP URL: use amqp://user:password@host:5672/vhost" in result.output
