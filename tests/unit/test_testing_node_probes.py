"""Broker probes and node settings from rabbittask.testing, without starting a broker."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from rabbittask.testing import RabbitNode, broker_answers, free_port


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A loopback TCP listener that is not a broker."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_broker_answers_is_false_fast_for_a_closed_port() -> None:
    started = time.monotonic()
    assert broker_answers(f"amqp://guest:guest@127.0.0.1:{free_port()}/") is False
    assert time.monotonic() - started < 3


def test_broker_answers_is_false_for_a_listener_that_speaks_http(listener: socket.socket) -> None:
    def answer_http() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    thread = threading.Thread(target=answer_http)
    thread.start()
    started = time.monotonic()
    assert broker_answers(f"amqp://guest:guest@127.0.0.1:{listener.getsockname()[1]}/") is False
    assert time.monotonic() - started < 3
    thread.join()


def test_broker_answers_gives_up_on_a_silent_listener_within_its_timeout(listener: socket.socket) -> None:
    # Given a port that accepts TCP (the kernel completes the handshake) but never speaks AMQP
    started = time.monotonic()
    assert broker_answers(f"amqp://guest:guest@127.0.0.1:{listener.getsockname()[1]}/", timeout_s=0.5) is False
    assert time.monotonic() - started < 3


def test_broker_answers_is_false_for_a_malformed_url() -> None:
    assert broker_answers("amqp://guest:guest@127.0.0.1:notaport/") is False


def test_a_node_gets_its_own_name_ports_and_loopback_url_before_it_starts() -> None:
    node = RabbitNode(extra_config=["consumer_timeout = 5000"], plugins=["rabbitmq_management"])
    other = RabbitNode()

    assert node.nodename == f"rt-{node.amqp_port}@localhost"
    assert node.url == f"amqp://guest:guest@127.0.0.1:{node.amqp_port}/"
    assert node.management_port is not None
    assert len({node.amqp_port, node.dist_port, node.management_port, other.amqp_port, other.dist_port}) == 5
    assert other.management_port is None
    assert not node.running
    node.cleanup()  # nothing started: a no-op
