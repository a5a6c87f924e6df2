"""Throwaway RabbitMQ nodes (rabbittask.testing.RabbitNode) against the real binary."""

from __future__ import annotations

import time
from collections.abc import Callable

import pika
import pytest
from pika.exceptions import AMQPConnectionError

from rabbittask.testing import NodeError, RabbitNode, broker_answers

pytestmark = pytest.mark.slow


def _connect(node: RabbitNode) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(node.url))


def test_the_session_broker_answers(broker_url: str) -> None:
    assert broker_answers(broker_url)


def test_a_durable_queue_and_its_message_survive_a_restart(rabbit_node: RabbitNode, unique_name: str) -> None:
    # Given a quorum queue holding one confirmed persistent message
    connection = _connect(rabbit_node)
    channel = connection.channel()
    channel.confirm_delivery()
    channel.queue_declare(unique_name, durable=True, arguments={"x-queue-type": "quorum"})
    channel.basic_publish("", unique_name, b"kept", pika.BasicProperties(delivery_mode=2))
    connection.close()

    # When the node restarts
    rabbit_node.restart()

    # Then the queue and the message are still there
    connection = _connect(rabbit_node)
    _, _, body = connection.channel().basic_get(unique_name, auto_ack=True)
    connection.close()
    assert body == b"kept"


def test_a_killed_node_stops_answering_at_once(rabbit_node: RabbitNode) -> None:
    connection = _connect(rabbit_node)

    rabbit_node.kill()

    assert not rabbit_node.running
    started = time.monotonic()
    assert not broker_answers(rabbit_node.url)
    assert time.monotonic() - started < 3
    with pytest.raises(AMQPConnectionError):
        connection.process_data_events(time_limit=1)
    with pytest.raises(NodeError, match="rabbitmqctl status"):
        rabbit_node.ctl("status", timeout_s=30)


def test_two_nodes_run_at_once_with_their_own_config(rabbit_node_factory: Callable[..., RabbitNode]) -> None:
    first = rabbit_node_factory(["consumer_timeout = 5000"])
    second = rabbit_node_factory()

    assert broker_answers(first.url) and broker_answers(second.url)
    assert first.ctl("eval", "application:get_env(rabbit, consumer_timeout).").strip() == "{ok,5000}"
    assert second.ctl("eval", "application:get_env(rabbit, consumer_timeout).").strip() != "{ok,5000}"
    # Each node is alone: stopping one leaves the other up
    first.stop()
    assert not broker_answers(first.url)
    assert broker_answers(second.url)


def test_stop_app_closes_the_port_and_close_all_connections_drops_clients(rabbit_node: RabbitNode) -> None:
    rabbit_node.stop_app()
    assert rabbit_node.running and not broker_answers(rabbit_node.url)
    rabbit_node.start_app()
    assert broker_answers(rabbit_node.url)

    connection = _connect(rabbit_node)
    rabbit_node.close_all_connections()
    with pytest.raises(AMQPConnectionError):
        for _ in range(50):
            connection.process_data_events(time_limit=0.1)
    assert connection.is_closed
