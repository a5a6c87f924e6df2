"""Topology as data: names, arguments and the definitions export."""

from __future__ import annotations

import json

from rabbittask.topology import QueueSpec, declarations, definitions, explain_precondition, queue_arguments


def test_quorum_queues_get_a_delivery_limit_and_at_least_once_dead_lettering() -> None:
    assert queue_arguments(QueueSpec("emails"), "rabbittask") == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "rabbittask.dlx",
        "x-dead-letter-routing-key": "emails",
        "x-delivery-limit": 20,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    classic = queue_arguments(QueueSpec("p", queue_type="classic", max_priority=9), "ex")
    assert classic == {
        "x-queue-type": "classic",
        "x-dead-letter-exchange": "ex.dlx",
        "x-dead-letter-routing-key": "p",
        "x-max-priority": 9,
    }


def test_definitions_are_stable_and_complete() -> None:
    decls = declarations("rabbittask", [QueueSpec("b"), QueueSpec("a")])
    first = json.dumps(definitions(decls), sort_keys=True)
    again = json.dumps(definitions(declarations("rabbittask", [QueueSpec("a"), QueueSpec("b")])), sort_keys=True)
    assert first == again
    data = definitions(decls)
    assert [q["name"] for q in data["queues"]] == ["a", "a.dlq", "b", "b.dlq"]
    assert [e["name"] for e in data["exchanges"]] == ["rabbittask", "rabbittask.dlx"]
    assert {(b["source"], b["destination"], b["routing_key"]) for b in data["bindings"]} == {
        ("rabbittask", "a", "a"),
        ("rabbittask", "b", "b"),
        ("rabbittask.dlx", "a.dlq", "a"),
        ("rabbittask.dlx", "b.dlq", "b"),
    }


def test_precondition_failures_are_explained() -> None:
    text = (
        "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'emails' in vhost '/': "
        "received the value 'quorum' of type 'longstr' but current is the value 'classic' of type 'longstr'"
    )
    assert explain_precondition(text, {"x-queue-type": "quorum"}).startswith(
        "queue 'emails' exists with other arguments: x-queue-type is 'classic' on the broker, the code declares "
        "'quorum'. Fix one side"
    )
    assert explain_precondition("PRECONDITION_FAILED - something else") == (
        "the broker refused a declaration: PRECONDITION_FAILED - something else"
    )
