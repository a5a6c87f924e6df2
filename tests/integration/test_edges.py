"""No silent drops at the edges, on a real broker: a delayed message whose queue is gone, and DLQ reads.

Each test has an exchange of its own (hence a delay ladder of its own, deleted at the end), so the
alternate exchange it gets never touches another app's.
"""

from __future__ import annotations

import asyncio
import importlib
import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pytest
from click.testing import CliRunner

from rabbittask.cli import main as cli
from rabbittask.delays import delay_entry, unroutable_name
from rabbittask.ops.status import gather
from tests import amqp

APP = "tests.apps.edges_app:app"


@pytest.fixture
def exchange(broker_url: str) -> Iterator[str]:
    name = f"rt-edges-{uuid.uuid4().hex[:8]}"
    yield name
    amqp.delete(broker_url, [unroutable_name(name)], [unroutable_name(name), f"{name}.delay.due"])
    amqp.delete_ladder(broker_url, name)


@pytest.fixture
def app(exchange: str, unique_name: str, amqp_cleanup: Any, broker_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    amqp_cleanup.queue(unique_name)
    amqp_cleanup.queue(f"{unique_name}.dlq")
    monkeypatch.setenv("RT_TEST_EXCHANGE", exchange)
    monkeypatch.setenv("RT_TEST_PREFIX", unique_name)
    monkeypatch.setenv("RABBITTASK_BROKER_URL", broker_url)
    module = importlib.reload(importlib.import_module("tests.apps.edges_app"))
    yield module.app
    module.app.close()


def test_a_delayed_message_whose_queue_was_deleted_ends_in_the_unroutable_queue_and_status_shows_it(
    app: Any, exchange: str, unique_name: str, broker_url: str
) -> None:
    # Given a countdown to a queue, and a producer delaying straight into the ladder for a queue nobody declared
    app.declare()
    sent = app.tasks["edges.noop"].apply_async(("late",), countdown=1.0)
    ladder, key = delay_entry(exchange, "ghost", 500)
    amqp.publish_raw(broker_url, key, b'{"v":1,"args":["x"],"kwargs":{}}', exchange=ladder, message_id="ghost-1",
                     content_type="application/json", type="edges.noop")  # fmt: skip
    # When the task queue is deleted before the countdown ends
    amqp.delete(broker_url, [unique_name])
    # Then both come due into <exchange>.unroutable, confirmed and kept, not dropped
    amqp.wait_depth(broker_url, unroutable_name(exchange), 2, timeout_s=20)
    kept = {props.message_id: props for props, _ in amqp.get_all(broker_url, unroutable_name(exchange))}
    assert set(kept) == {sent.id, "ghost-1"}
    # And status (JSON and table) and the dashboard's data say so
    app.tasks["edges.noop"].apply_async(("again",), countdown=0.3)
    amqp.wait_depth(broker_url, unroutable_name(exchange), 1, timeout_s=20)
    data = asyncio.run(gather(app, listen_s=0.1))
    assert data["unroutable"] == {"queue": unroutable_name(exchange), "ready": 1}
    result = CliRunner().invoke(cli, ["status", "-A", APP, "--wait", "0.1"])
    assert "1 delayed message(s) came due for a queue that no longer exists" in result.output
    assert unroutable_name(exchange) in result.output


def test_a_delayed_message_to_a_live_queue_is_delivered_once_and_nothing_goes_to_unroutable(
    app: Any, exchange: str, unique_name: str, broker_url: str
) -> None:
    app.declare()
    app.tasks["edges.noop"].apply_async(("on-time",), countdown=0.3)
    amqp.wait_depth(broker_url, unique_name, 1, timeout_s=20)
    assert amqp.depth(broker_url, unroutable_name(exchange)) == 0
    assert [props.message_id for props, _ in amqp.get_all(broker_url, unique_name)] != []


def test_reading_a_dead_letter_queue_many_times_never_drops_a_dead_letter(
    app: Any, unique_name: str, broker_url: str
) -> None:
    # Given a dead letter in a DLQ rabbittask declared (no delivery limit: reads return the message each time)
    app.declare()
    dlq = f"{unique_name}.dlq"
    headers = {"rt-reason": "task raised"}
    amqp.publish_raw(broker_url, dlq, b'{"v":1,"args":["d"],"kwargs":{}}', exchange="", message_id="dead-1",
                     content_type="application/json", type="edges.noop", headers=headers)  # fmt: skip
    # When it is read more often than RabbitMQ 4's default quorum delivery limit (20)
    runner = CliRunner()
    for _ in range(25):
        result = runner.invoke(cli, ["dlq", "ls", "-Q", unique_name, "-A", APP, "--json"])
        assert result.exit_code == 0, result.output
        assert "dead-1" in result.output
    shown = runner.invoke(cli, ["dlq", "show", "dead-1", "-Q", unique_name, "-A", APP])
    assert shown.exit_code == 0 and "task raised" in shown.output
    # Then it is still there, once
    ((props, _),) = amqp.get_all(broker_url, dlq)
    assert props.message_id == "dead-1"
    # On 3.x every read still counts (x-delivery-count), but the DLQ has no limit to reach
    assert props.headers.get("x-delivery-count", 0) >= 25
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        version = connection._impl.server_properties["version"]
    finally:
        connection.close()
    if str(version).startswith("3."):
        declared = [d for d in app.declarations() if getattr(d, "name", "") == dlq]
        assert "x-delivery-limit" not in declared[0].arguments
