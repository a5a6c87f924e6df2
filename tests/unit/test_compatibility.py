"""What each RabbitMQ version changes, and the declarations rabbittask builds for it (docs/compatibility.md)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner, Result

from rabbittask import App, ConfigError
from rabbittask.amqp.server import UNLIMITED, Server, for_server
from rabbittask.topology import QueueDecl, QueueSpec, declarations
from rabbittask.worker.session import consume_arguments


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("3.10.8", (3, 10, 8)),
        (b"4.0.5", (4, 0, 5)),
        ("4.3.0-rc.1", (4, 3, 0)),
        ("4.2", (4, 2, 0)),
        ("", (3, 0, 0)),
        (None, (3, 0, 0)),
        ("unknown", (3, 0, 0)),
        (42, (3, 0, 0)),
    ],
)
def test_the_version_is_read_from_the_server_property_and_taken_for_3x_when_unreadable(
    text: object, version: tuple[int, int, int]
) -> None:
    assert Server.parse(text).version == version
    assert Server.of({"version": text}).version == version


@pytest.mark.parametrize(
    ("version", "default_limit", "priorities", "nack_counts", "global_qos"),
    [
        ("3.10.8", None, 0, True, True),
        ("3.13.7", None, 0, True, True),
        ("4.0.0", 20, 2, True, True),
        ("4.2.1", 20, 2, True, True),
        ("4.3.0", 20, 32, False, False),
    ],
)
def test_each_version_says_what_it_changes(
    version: str, default_limit: int | None, priorities: int, nack_counts: bool, global_qos: bool
) -> None:
    server = Server.parse(version)
    assert server.default_delivery_limit == default_limit
    assert server.quorum_priorities == priorities
    assert server.nack_counts_delivery is nack_counts
    assert server.global_qos_allowed is global_qos


@pytest.mark.parametrize(
    ("version", "own_timeout"),
    [("3.10.8", False), ("3.11.14", False), ("3.11.15", True), ("3.13.7", True), ("4.0.0", True), ("4.3.0", True)],
)
def test_a_consumer_asks_for_a_timeout_of_its_own_from_3_11_15(version: str, own_timeout: bool) -> None:
    server = Server.parse(version)
    assert server.consumer_timeout_per_consumer is own_timeout
    arguments = consume_arguments({"reports": 4500.0}, server)
    assert arguments == ({"reports": {"x-consumer-timeout": 4_500_000}} if own_timeout else {})


def app_with_queues() -> App:
    app = App("compat")

    @app.task(queue="emails")
    def send() -> None: ...

    @app.task(queue="thumbs", queue_type="classic")
    def thumb() -> None: ...

    return app


def queues(version: str) -> dict[str, dict[str, object]]:
    decls = for_server(app_with_queues().declarations(), Server.parse(version))
    return {d.name: d.arguments for d in decls if isinstance(d, QueueDecl)}


def test_on_3x_queues_are_declared_as_tested_with_no_delivery_limit_on_dead_letter_queues() -> None:
    found = queues("3.10.8")
    assert "x-delivery-limit" not in found["emails.dlq"]
    assert found["emails"]["x-delivery-limit"] == 20
    assert "x-delivery-limit" not in found["rabbittask.unroutable"]
    assert for_server(app_with_queues().declarations(), Server.parse("3.10.8")) == app_with_queues().declarations()


@pytest.mark.parametrize("version", ["4.0.0", "4.1.4", "4.3.0"])
def test_from_4_0_dead_letter_queues_and_unlimited_task_queues_are_declared_without_the_default_limit(
    version: str,
) -> None:
    # 4.0 gives every quorum queue a delivery limit of 20: a dead letter read 20 times would be dropped
    found = queues(version)
    assert found["emails.dlq"]["x-delivery-limit"] == UNLIMITED
    assert found["rabbittask.unroutable"]["x-delivery-limit"] == UNLIMITED
    assert found["emails"]["x-delivery-limit"] == 20  # a task queue's own limit stays what the task says
    # classic queues count no deliveries: nothing to lift
    assert "x-delivery-limit" not in found["thumbs.dlq"] and "x-delivery-limit" not in found["thumbs"]
    # the delay ladder's queues are never consumed, so never returned: left as on 3.x
    assert "x-delivery-limit" not in found["rabbittask.delay.100"]


def test_a_quorum_queue_spec_without_a_delivery_limit_gets_none_on_4x_either() -> None:
    decls = declarations("ex", [QueueSpec("reports", delivery_limit=None)])
    on = {v: {d.name: d.arguments for d in for_server(decls, Server.parse(v)) if isinstance(d, QueueDecl)} for v in
          ("3.12.0", "4.0.1")}  # fmt: skip
    assert "x-delivery-limit" not in on["3.12.0"]["reports"]
    assert on["4.0.1"]["reports"]["x-delivery-limit"] == UNLIMITED


def test_topology_export_renders_the_arguments_of_the_version_asked_for() -> None:
    from rabbittask.cli import main

    def dlq_arguments(*version: str) -> dict[str, object]:
        result = CliRunner().invoke(main, ["topology", "export", "-A", "examples.emails:app", *version])
        assert result.exit_code == 0, result.output
        queues = json.loads(result.output)["queues"]
        return next(q["arguments"] for q in queues if q["name"].endswith(".dlq"))

    assert "x-delivery-limit" not in dlq_arguments()  # the default: 3.x, as tested for real
    assert dlq_arguments("--rabbitmq-version", "4.1")["x-delivery-limit"] == UNLIMITED
    bad = CliRunner().invoke(main, ["topology", "export", "-A", "examples.emails:app", "--rabbitmq-version", "four"])
    assert bad.exit_code == 2 and "'four' is not a version such as 3.13 or 4.1" in bad.output


def app_with_priorities() -> App:
    app = App("prio")

    @app.task(queue="reports", max_priority=10)
    def report() -> None: ...

    @app.task(queue="thumbs", queue_type="classic", max_priority=10)
    def thumb() -> None: ...

    return app


@pytest.mark.parametrize("version", ["4.0.0", "4.2.1", "4.3.0"])
def test_from_4_0_a_quorum_queue_with_max_priority_is_declared_without_x_max_priority(version: str) -> None:
    decls = for_server(app_with_priorities().declarations(), Server.parse(version))
    found = {d.name: d.arguments for d in decls if isinstance(d, QueueDecl)}
    # 4.x quorum queues keep message priorities with no argument; the queue is declared as without max_priority
    assert found["reports"] == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "rabbittask.dlx",
        "x-dead-letter-routing-key": "reports",
        "x-delivery-limit": 20,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    assert found["thumbs"]["x-max-priority"] == 10  # a classic queue keeps its argument on every version


@pytest.mark.parametrize("version", ["3.10.8", "3.13.7"])
def test_on_3x_a_quorum_queue_with_max_priority_is_refused_naming_the_queue_the_version_and_the_way_out(
    version: str,
) -> None:
    with pytest.raises(ConfigError) as info:
        for_server(app_with_priorities().declarations(), Server.parse(version))
    assert str(info.value) == (
        f"queue 'reports': max_priority on a quorum queue needs RabbitMQ 4.0+, but the broker is RabbitMQ {version}, "
        "whose quorum queues have no priorities; use queue_type='classic', or RabbitMQ 4.0+"
    )


def test_a_classic_queue_with_max_priority_is_declared_alike_on_3x() -> None:
    decls = declarations("ex", [QueueSpec("thumbs", "classic", max_priority=5)])
    assert for_server(decls, Server.parse("3.10.8")) == decls
    assert next(d for d in decls if isinstance(d, QueueDecl)).arguments["x-max-priority"] == 5


def test_topology_export_renders_quorum_priorities_for_4x_and_refuses_them_for_3x(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rabbittask.cli import main
    from tests.apps.topo import importable

    spec = importable(app_with_priorities(), "prio_export_app", monkeypatch)

    def export(*version: str) -> Result:
        return CliRunner().invoke(main, ["topology", "export", "-A", spec, *version])

    for version in ("4.0", "4.2", "4.3"):
        result = export("--rabbitmq-version", version)
        assert result.exit_code == 0, result.output
        queues = {q["name"]: q["arguments"] for q in json.loads(result.output)["queues"]}
        assert "x-max-priority" not in queues["reports"] and queues["thumbs"]["x-max-priority"] == 10
    for version in ((), ("--rabbitmq-version", "3.12")):  # the default is 3.13
        refused = export(*version)
        assert refused.exit_code == 2
        assert refused.output == (
            f"error: queue 'reports': max_priority on a quorum queue needs RabbitMQ 4.0+, but the broker is RabbitMQ "
            f"{'3.12.0' if version else '3.13.0'}, whose quorum queues have no priorities; use queue_type='classic', "
            "or RabbitMQ 4.0+ (for a 4.x broker, export with --rabbitmq-version 4.1)\n"
        )
