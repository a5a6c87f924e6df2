"""`rabbittask topology apply` and `diff` (without management API) against the shared broker."""

from __future__ import annotations

import pika
import pytest
from click.testing import CliRunner

from rabbittask.cli import main
from rabbittask.delays import DELAY_LEVELS, delay_level_name, delay_routing_key
from rabbittask.topology import ExchangeDecl, QueueDecl
from tests import amqp
from tests.apps.topo import importable, make_app


@pytest.fixture
def prefix(unique_name: str, amqp_cleanup: object) -> str:
    # Everything the test app declares, the delay ladder included (26 queues, 27 exchanges)
    for d in make_app(unique_name).declarations():
        if isinstance(d, QueueDecl):
            amqp_cleanup.queue(d.name)  # type: ignore[attr-defined]
        elif isinstance(d, ExchangeDecl):
            amqp_cleanup.exchange(d.name)  # type: ignore[attr-defined]
    return unique_name


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def queue_exists(url: str, name: str) -> bool:
    try:
        amqp.depth(url, name)
    except pika.exceptions.ChannelClosedByBroker:
        return False
    return True


def test_apply_declares_everything_and_a_second_apply_finds_it_all_as_declared(
    prefix: str, broker_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = importable(make_app(prefix, broker_url), prefix.replace("-", "_"), monkeypatch)

    code, out = run("topology", "apply", "-A", spec, "--dry-run")
    assert code == 0, out
    assert f"would declare queue '{prefix}.work'" in out
    assert not queue_exists(broker_url, f"{prefix}.work")  # a dry run changes nothing

    assert f"would declare binding '{prefix}.delay.200' -> exchange '{prefix}.delay.100' (key '*.0.#')" in out

    code, out = run("topology", "apply", "-A", spec)
    assert code == 0, out
    assert queue_exists(broker_url, f"{prefix}.prio.dlq")
    assert queue_exists(broker_url, delay_level_name(prefix, DELAY_LEVELS - 1))
    # The exchange-to-exchange bindings exist: a message with no delay bits that enters at the top
    # level passes all 26 of them down to the due exchange, and from there into its task queue
    top = delay_level_name(prefix, DELAY_LEVELS - 1)
    amqp.publish_raw(broker_url, delay_routing_key(f"{prefix}.work", 0), b"{}", exchange=top)
    amqp.wait_depth(broker_url, f"{prefix}.work", 1)

    code, out = run("topology", "apply", "-A", spec)
    assert code == 0, out
    assert f"= queue '{prefix}.work': exists as declared" in out
    assert f"= exchange '{prefix}.dlx': exists as declared" in out
    # the ladder's queues, with their fixed TTL and dead-letter arguments, and its exchanges
    for level in range(DELAY_LEVELS):
        assert f"= queue '{delay_level_name(prefix, level)}': exists as declared" in out
        assert f"= exchange '{delay_level_name(prefix, level)}': exists as declared" in out
    assert f"= exchange '{prefix}.delay': exists as declared" in out


def test_apply_on_a_conflicting_queue_changes_nothing_and_prints_each_difference(
    prefix: str, broker_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a queue that exists with other arguments than the code's, and nothing else yet
    old = make_app(prefix, broker_url, delivery_limit=5)
    connection = amqp.connect(broker_url)
    work = next(d for d in old.declarations() if getattr(d, "name", "") == f"{prefix}.work")
    connection.channel().queue_declare(work.name, durable=True, arguments=work.arguments)  # type: ignore[attr-defined]
    new = make_app(prefix, broker_url, single_active_consumer=True, message_ttl_ms=60_000)
    spec = importable(new, prefix.replace("-", "_"), monkeypatch)

    # When ops apply the new code's topology
    code, out = run("topology", "apply", "-A", spec)

    # Then every difference is listed with the safe ways out, and nothing was created or changed
    assert code == 1, out
    assert f"~ queue '{prefix}.work':" in out
    assert "x-delivery-limit is 5 on the broker, the code declares 20" in out
    assert "x-single-active-consumer is not set on the broker, the code declares true" in out
    assert "x-message-ttl is not set on the broker, the code declares 60000" in out
    assert "set delivery_limit=5, message_ttl_ms, single_active_consumer on the tasks of" in out
    assert f"nothing was changed: 1 conflict(s), listed first above (queue '{prefix}.work')" in out
    assert out.index("conflict(s) with what the broker has") < out.index("would declare")  # conflicts first
    assert not queue_exists(broker_url, f"{prefix}.prio")
    channel = connection.channel()
    channel.queue_declare(work.name, durable=True, arguments=work.arguments)  # type: ignore[attr-defined]
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        channel.exchange_declare(prefix, passive=True)
    connection.close()


def test_apply_on_a_queue_of_another_type_says_the_type_differs(
    prefix: str, broker_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    connection = amqp.connect(broker_url)
    connection.channel().queue_declare(f"{prefix}.work", durable=True)  # classic, no arguments
    connection.close()
    code, out = run("topology", "apply", "-A", importable(make_app(prefix, broker_url), "topo_type", monkeypatch))
    assert code == 1, out
    # The real difference, alone: the dead-letter arguments a quorum queue comes with are not listed
    lines = out[out.index(f"~ queue '{prefix}.work':") :].splitlines()
    assert lines[1].strip() == "type is classic on the broker, the code declares quorum"
    assert lines[2].strip() == "safe ways out:"
    assert f"set queue_type='classic' on the tasks of queue '{prefix}.work'" in out
    assert "give the tasks a new queue name" in out


def test_diff_without_management_url_checks_existence_and_says_what_it_did_not_compare(
    prefix: str, broker_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = importable(make_app(prefix, broker_url), "topo_passive", monkeypatch)
    code, out = run("topology", "diff", "-A", spec)
    assert code == 1, out
    assert f"- queue '{prefix}.work': missing on the broker" in out
    assert "not compared without --management-url" in out

    assert run("topology", "apply", "-A", spec)[0] == 0
    code, out = run("topology", "diff", "-A", spec)
    assert code == 0, out
    assert "no differences" in out
    assert "not compared without --management-url" in out


def test_unreachable_broker_is_exit_2_with_the_password_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app("topo-unreachable", "amqp://ops:s3cret@127.0.0.1:1/")
    spec = importable(app, "topo_unreachable", monkeypatch)
    for command in ("apply", "diff"):
        code, out = run("topology", command, "-A", spec)
        assert code == 2, out
        assert "cannot connect to the broker at 127.0.0.1:1" in out
        assert "s3cret" not in out
    code, out = run("topology", "diff", "-A", spec, "--management-url", "http://ops:s3cret@127.0.0.1:1/")
    assert code == 2, out
    assert "cannot reach the management API at http://127.0.0.1:1" in out
    assert "s3cret" not in out
