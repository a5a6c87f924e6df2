"""The plugin's broker choice and worker helpers, without starting a broker."""

from __future__ import annotations

import contextlib
import socket
import sys
from pathlib import Path

import pytest

from rabbittask import App
from rabbittask.errors import NodeError
from rabbittask.testing import brokers
from rabbittask.testing.brokers import BrokerUrl, connected, container_broker, docker_answers, session_broker
from rabbittask.testing.workers import app_path, import_root, worker_env

app = App("plugin-unit", broker_url="amqp://guest:guest@127.0.0.1:1/")


def test_the_url_in_the_environment_comes_first_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(brokers, "broker_answers", lambda url, timeout_s: True)
    with contextlib.ExitStack() as stack:
        url = session_broker(stack, {"RABBITTASK_TEST_BROKER_URL": "amqp://u:secret@h:5672/"})
    assert isinstance(url, str) and url == "amqp://u:secret@h:5672/" and url.source == "env"
    assert "secret" not in url.description and "RABBITTASK_TEST_BROKER_URL" in url.description


def test_a_url_in_the_environment_that_does_not_answer_is_an_error_not_a_fallback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(brokers, "broker_answers", lambda url, timeout_s: False)
    with contextlib.ExitStack() as stack, pytest.raises(NodeError, match="does not answer"):
        session_broker(stack, {"RABBITTASK_TEST_BROKER_URL": "amqp://h:1/"})


def test_without_docker_testcontainers_is_skipped_with_the_reason() -> None:
    with contextlib.ExitStack() as stack:
        assert container_broker(stack, {"DOCKER_HOST": "tcp://127.0.0.1:1"}) == "no Docker engine answers"
    assert not docker_answers(environ={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})


def test_with_docker_but_no_testcontainers_the_reason_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "testcontainers.rabbitmq", None)  # import fails as if not installed
    with socket.socket() as engine:
        engine.bind(("127.0.0.1", 0))
        engine.listen()
        host = f"tcp://127.0.0.1:{engine.getsockname()[1]}"
        with contextlib.ExitStack() as stack:
            why = container_broker(stack, {"DOCKER_HOST": host})
    assert not isinstance(why, BrokerUrl) and "rabbittask[testing]" in why


def test_with_no_broker_at_all_the_error_says_what_was_tried(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> Path:
        raise NodeError("rabbitmq-server is not installed")

    monkeypatch.setattr(brokers, "rabbitmq_bin_dir", missing)
    with contextlib.ExitStack() as stack, pytest.raises(NodeError) as caught:
        session_broker(stack, {"DOCKER_HOST": "tcp://127.0.0.1:1"})
    assert "RABBITTASK_TEST_BROKER_URL is not set" in str(caught.value) and "no Docker" in str(caught.value)


def test_an_app_is_found_by_its_import_path_and_its_directory_goes_on_the_workers_path() -> None:
    assert app_path(app) == f"{__name__}:app"
    assert app_path("shop:app") == "shop:app"
    assert import_root("tests.apps.kit_app:app") == Path(__file__).resolve().parents[2]
    assert import_root("no_such_module_here:app") is None
    with pytest.raises(LookupError):
        app_path(App("nowhere"))
    env = worker_env("amqp://x/", {"EXTRA": "1"}, path=["/a", Path("/b")])
    assert env["RABBITTASK_BROKER_URL"] == "amqp://x/" and env["EXTRA"] == "1"
    assert env["PYTHONPATH"].startswith("/a:/b")


def test_connected_points_an_app_at_another_broker_for_a_while() -> None:
    before = app.clients
    with connected(app, "amqp://guest:guest@127.0.0.1:2/") as same:
        assert same is app and app.settings.broker_url.endswith(":2/") and app.clients is not before
    assert app.settings.broker_url.endswith(":1/") and app.clients is before
