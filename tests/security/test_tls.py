"""TLS: a node that accepts only amqps:// with verified client certificates; every refusal explained."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rabbittask import App, PublishConnectionError
from rabbittask.testing import RabbitNode, TlsFiles
from tests.tlscerts import Pki, make_pki, openssl_available

pytestmark = [
    pytest.mark.security,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not openssl_available(), reason="the openssl command is needed to make test certificates"),
]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_node(pki: Pki) -> Iterator[RabbitNode]:
    """`listeners.tcp = none`, one TLS listener, `verify_peer` and `fail_if_no_peer_cert`."""
    with RabbitNode(tls=TlsFiles(str(pki.ca), str(pki.server_cert), str(pki.server_key))) as node:
        yield node


def make_app(url: str, **settings: Any) -> tuple[App, Callable[..., Any]]:
    app = App("tls", broker_url=url, connect_timeout_s=3, **settings)

    @app.task(queue="rt-tls-check", name="tls.check")
    def check(n: int) -> int:
        return n

    return app, check


def both_fail(url: str, **settings: Any) -> tuple[str, str]:
    """Publish once sync and once async; return the two error messages a person would see."""
    app, check = make_app(url, **settings)
    try:
        with pytest.raises(PublishConnectionError) as sync_error:
            check.delay(1)
        with pytest.raises(PublishConnectionError) as async_error:
            asyncio.run(check.adelay(1))
    finally:
        app.close()
    return str(sync_error.value), str(async_error.value)


def client_files(pki: Pki) -> dict[str, str]:
    return {"tls_ca_file": str(pki.ca), "tls_cert_file": str(pki.client_cert), "tls_key_file": str(pki.client_key)}


def test_the_node_has_no_plain_listener(tls_node: RabbitNode) -> None:
    listeners = tls_node.cli("rabbitmq-diagnostics", "listeners")
    assert "amqp/ssl" in listeners and "protocol: amqp," not in listeners


def test_a_client_with_the_right_ca_and_certificate_publishes_and_consumes(tls_node: RabbitNode, pki: Pki) -> None:
    app, check = make_app(tls_node.url, **client_files(pki))
    try:
        check.delay(1)
        asyncio.run(check.adelay(2))
    finally:
        app.close()
    assert "rt-tls-check" in tls_node.ctl("list_queues", "name", "messages")


def test_a_broker_certificate_from_another_ca_is_refused_naming_tls_ca_file(tls_node: RabbitNode, pki: Pki) -> None:
    files = {**client_files(pki), "tls_ca_file": str(pki.other_ca)}
    for message in both_fail(tls_node.url, **files):
        assert "TLS: the certificate of the broker at localhost" in message
        assert "not trusted" in message and "set tls_ca_file" in message


def test_a_host_name_the_certificate_does_not_list_is_refused(tls_node: RabbitNode, pki: Pki) -> None:
    url = f"amqps://guest:guest@127.0.0.1:{tls_node.amqp_port}/"  # the certificate names only localhost
    for message in both_fail(url, **client_files(pki)):
        assert "is not valid for host '127.0.0.1'" in message
        assert "connect with a host name that the certificate lists" in message


def test_a_client_without_a_certificate_is_refused_and_told_to_set_one(tls_node: RabbitNode, pki: Pki) -> None:
    for message in both_fail(tls_node.url, tls_ca_file=str(pki.ca)):
        assert "requires a client certificate and none was presented" in message
        assert "set tls_cert_file and tls_key_file" in message


def test_a_client_certificate_from_another_ca_is_refused(tls_node: RabbitNode, pki: Pki) -> None:
    files = {"tls_ca_file": str(pki.ca), "tls_cert_file": str(pki.stranger_cert), "tls_key_file": str(pki.stranger_key)}
    for message in both_fail(tls_node.url, **files):
        assert f"did not accept the client certificate {str(pki.stranger_cert)!r}" in message


def test_plaintext_amqp_to_the_tls_port_is_refused_with_a_hint_to_use_amqps(tls_node: RabbitNode) -> None:
    for message in both_fail(f"amqp://guest:guest@localhost:{tls_node.amqp_port}/"):
        assert "closed the connection before the AMQP handshake" in message
        assert "use an amqps:// URL" in message


def test_unreadable_tls_files_are_a_config_error_naming_them(tls_node: RabbitNode, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    app, check = make_app(tls_node.url, tls_ca_file=missing)
    with pytest.raises(ValueError, match="cannot load the TLS files.*nope.pem"):
        check.delay(1)
