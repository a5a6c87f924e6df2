"""A real broker for a test session, first that applies, and which one it was.

1. `RABBITTASK_TEST_BROKER_URL`: a broker you run (CI's service, `make broker`);
2. a testcontainers RabbitMQ, where a Docker engine answers and `rabbittask[testing]` is installed;
3. a throwaway node from the local `rabbitmq-server` binary (`RabbitNode`: own ports, data and logs,
   gone when the session ends).

`BrokerUrl` is the URL as a `str`, with `source` and `description` saying which it was, so that a
test run can report the broker it used (the pytest plugin prints it in its summary).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from rabbittask.clients import Clients
from rabbittask.errors import NodeError
from rabbittask.settings import mask_url
from rabbittask.testing.nodes import RabbitNode
from rabbittask.testing.probes import broker_answers, rabbitmq_bin_dir

if TYPE_CHECKING:
    from rabbittask.app import App

ENV_URL = "RABBITTASK_TEST_BROKER_URL"
ENV_IMAGE = "RABBITTASK_TEST_RABBITMQ_IMAGE"
DEFAULT_IMAGE = "rabbitmq:3.10"


class BrokerUrl(str):
    """An AMQP URL that knows where it came from: `source` is "env", "testcontainers" or "rabbitmq-server"."""

    source: str
    description: str

    def __new__(cls, url: str, source: str, description: str) -> BrokerUrl:
        made = super().__new__(cls, url)
        made.source = source
        made.description = description
        return made


def docker_answers(timeout_s: float = 0.5, environ: Mapping[str, str] = os.environ) -> bool:
    """True if a Docker engine accepts a connection (its unix socket, or DOCKER_HOST=tcp://...)."""
    parts = urlsplit(environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"))
    try:
        if parts.scheme == "unix":
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(timeout_s)
                sock.connect(parts.path)
        elif parts.scheme == "tcp" and parts.hostname:
            with socket.create_connection((parts.hostname, parts.port or 2375), timeout=timeout_s):
                pass
        else:
            return False
    except OSError:
        return False
    return True


def container_broker(stack: contextlib.ExitStack, environ: Mapping[str, str] = os.environ) -> BrokerUrl | str:
    """A RabbitMQ container (stopped when `stack` closes), or why there is none (a `str` that is not a URL)."""
    if not docker_answers(environ=environ):
        return "no Docker engine answers"
    try:
        from testcontainers.rabbitmq import RabbitMqContainer  # the `testing` extra, never a hard dependency
    except ImportError:
        return "testcontainers is not installed (pip install 'rabbittask[testing]')"
    image = environ.get(ENV_IMAGE, DEFAULT_IMAGE)
    container = stack.enter_context(RabbitMqContainer(image))
    url = f"amqp://guest:guest@{container.get_container_host_ip()}:{container.get_exposed_port(5672)}/"
    return BrokerUrl(url, "testcontainers", f"a testcontainers RabbitMQ ({image}) at {mask_url(url)}")


def session_broker(stack: contextlib.ExitStack, environ: Mapping[str, str] = os.environ) -> BrokerUrl:
    """The broker of a test session (see the module doc); raise `NodeError` saying why there is none.

    What it starts is stopped when `stack` closes.
    """
    url = environ.get(ENV_URL)
    if url:
        if not broker_answers(url, timeout_s=5):
            raise NodeError(f"{ENV_URL}={mask_url(url)} does not answer: start that broker or unset the variable")
        return BrokerUrl(url, "env", f"{ENV_URL} ({mask_url(url)})")
    container = container_broker(stack, environ)
    if isinstance(container, BrokerUrl):
        return container
    try:
        rabbitmq_bin_dir()
    except NodeError as e:
        raise NodeError(f"no broker for the tests: {ENV_URL} is not set, {container}, and {e}") from None
    node = stack.enter_context(RabbitNode())
    why = f"{ENV_URL} is not set and {container}"
    return BrokerUrl(node.url, "rabbitmq-server", f"a throwaway rabbitmq-server node at {mask_url(node.url)} ({why})")


@contextlib.contextmanager
def connected(app: App, url: str) -> Iterator[App]:
    """Point `app` at the broker `url` for a while: new clients on it, closed after, then the app as it was.

    An app reads its broker URL once, when it is made (often at import); a test's broker is chosen
    later. Its tasks send through the app, so they follow.
    """
    settings, clients = app.settings, app.clients
    app.settings = settings.model_copy(update={"broker_url": url})
    app.clients = Clients(app.settings, app.declarations)
    try:
        yield app
    finally:
        app.close()
        app.settings, app.clients = settings, clients
