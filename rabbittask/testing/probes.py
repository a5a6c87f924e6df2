"""Probes a test suite needs before it has a broker: a free port, "does a broker answer here?", where RabbitMQ is."""

from __future__ import annotations

import os
import random
import shutil
import socket
from pathlib import Path
from urllib.parse import urlsplit

import pika

from rabbittask.errors import NodeError

# The kernel hands out outgoing (ephemeral) ports from 32768 up on Linux; listening below that
# keeps a node's port from being taken by some client connection between stop() and start().
_PORT_RANGE = (20000, 32000)


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now (below the ephemeral range)."""
    for _ in range(100):
        port = random.randrange(*_PORT_RANGE)
        if _can_bind(port):
            return port
    with socket.socket() as sock:  # crowded range: let the kernel choose
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _can_bind(port: int) -> bool:
    with socket.socket() as sock:
        # Same option as the Erlang listener, so a port in TIME_WAIT counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def broker_answers(url: str, timeout_s: float = 2.0) -> bool:
    """Return True if an AMQP broker at ``url`` accepts a connection within ``timeout_s``; never raises."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
        # A plain TCP probe first: it is silent, while pika logs an error per refused attempt.
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
        params = pika.URLParameters(url)
        params.connection_attempts = 1
        params.retry_delay = 0
        params.socket_timeout = timeout_s
        params.stack_timeout = timeout_s
        params.blocked_connection_timeout = timeout_s
        params.client_properties = {"connection_name": "rabbittask.testing.broker_answers"}
        connection = pika.BlockingConnection(params)
        connection.close()
    except Exception:
        return False
    return True


def rabbitmq_bin_dir() -> Path:
    """Return the directory holding the real ``rabbitmq-server`` and ``rabbitmqctl`` scripts.

    ``RABBITTASK_RABBITMQ_BIN_DIR`` overrides the search. Debian's ``/usr/sbin`` entries are
    wrappers that ``su`` to the rabbitmq user; the scripts they wrap accept any user.
    """
    override = os.environ.get("RABBITTASK_RABBITMQ_BIN_DIR")
    candidates = [Path(override)] if override else []
    found = shutil.which("rabbitmq-server") or shutil.which("rabbitmq-server", path="/usr/sbin:/usr/local/sbin")
    if found:
        candidates.append(Path(found).resolve().parent)
    candidates.append(Path("/usr/lib/rabbitmq/bin"))
    for directory in candidates:
        if (directory / "rabbitmq-server").is_file() and (directory / "rabbitmqctl").is_file():
            return directory
    raise NodeError(
        "rabbitmq-server is not installed: install it (Debian: apt-get install rabbitmq-server) "
        "or set RABBITTASK_TEST_BROKER_URL to a broker the tests may use"
    )
