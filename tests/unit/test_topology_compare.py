"""The pure side of `topology diff` and `apply`: comparing with a snapshot, reading 406 texts."""

from __future__ import annotations

import json
from typing import Any

from rabbittask.admin.apply import _value
from rabbittask.admin.compare import Live, applicable_policies, compare, ways_out
from rabbittask.admin.formats import render
from rabbittask.topology import QueueSpec, declarations


def live_from(decls: list[Any]) -> Live:
    """A management-API-like snapshot holding exactly `decls`."""
    doc = json.loads(render(decls, "definitions"))
    queues = {q["name"]: {**q, "type": q["arguments"]["x-queue-type"], "exclusive": False} for q in doc["queues"]}
    return Live({x["name"]: x for x in doc["exchanges"]}, queues, doc["bindings"])


def test_a_broker_with_exactly_the_code_topology_has_no_differences() -> None:
    decls = declarations("ex", [QueueSpec("a"), QueueSpec("b", "classic", max_priority=3)])
    assert compare(decls, live_from(decls)) == ([], [])


def test_types_arguments_bindings_and_extra_objects_are_all_reported() -> None:
    decls = declarations("ex", [QueueSpec("a"), QueueSpec("b")])
    live = live_from(declarations("ex", [QueueSpec("a", delivery_limit=5), QueueSpec("b", "classic"), QueueSpec("c")]))
    live.exchanges["ex.delay.1000"] = {"name": "ex.delay.1000", "type": "direct"}
    live.exchanges["other"] = {"name": "other", "type": "topic"}  # not the app's: never "extra"
    diffs, notes = compare(decls, live)
    assert [str(d) for d in diffs] == [
        "~ queue 'a': x-delivery-limit is 5 on the broker, the code declares 20",
        "~ queue 'b': type is classic on the broker, the code declares quorum",
        "~ queue 'b': x-dead-letter-strategy is not set on the broker, the code declares \"at-least-once\"",
        "~ queue 'b': x-delivery-limit is not set on the broker, the code declares 20",
        "~ queue 'b': x-overflow is not set on the broker, the code declares \"reject-publish\"",
        "~ queue 'b.dlq': type is classic on the broker, the code declares quorum",
        "+ binding 'ex' -> queue 'c' (key 'c'): on the broker, not in the code",
        "+ binding 'ex.dlx' -> queue 'c.dlq' (key 'c'): on the broker, not in the code",
        "+ queue 'c': on the broker, not in the code",
        "+ queue 'c.dlq': on the broker, not in the code",
        "+ exchange 'ex.delay.1000': on the broker, not in the code",
    ]
    assert notes == []


def test_values_compare_as_the_broker_sees_them() -> None:
    decls = declarations("ex", [QueueSpec("a")])
    live = live_from(decls)
    live.queues["a"]["arguments"]["x-delivery-limit"] = "20"  # a string is not the number 20
    assert [d.detail for d in compare(decls, live)[0]] == [
        'x-delivery-limit is "20" on the broker, the code declares 20'
    ]


def test_a_passive_snapshot_reports_only_missing_objects_and_says_what_it_did_not_compare() -> None:
    decls = declarations("ex", [QueueSpec("a")])
    live = Live({"ex": None, "ex.dlx": None}, {"a": None}, None, complete=False)
    diffs, notes = compare(decls, live)
    assert [str(d) for d in diffs] == ["- queue 'a.dlq': missing on the broker"]
    assert "not compared without --management-url" in notes[0]


def test_the_policy_that_applies_is_the_matching_one_of_highest_priority() -> None:
    policies = [
        {"name": "low", "pattern": "^a", "apply-to": "queues", "priority": 0, "definition": {"max-length": 1}},
        {"name": "high", "pattern": "^a$", "apply-to": "all", "priority": 5, "definition": {"max-length": 2}},
        {"name": "ex-only", "pattern": ".*", "apply-to": "exchanges", "priority": 9, "definition": {}},
        {"name": "op", "pattern": ".", "priority": 0, "definition": {"expires": 1}, "operator": True},
    ]
    assert applicable_policies("a", "queues", policies) == [
        "policy 'high' ({\"max-length\": 2})",
        "operator policy 'op' ({\"expires\": 1})",
    ]
    assert applicable_policies("b", "queues", policies[:3]) == []


def test_406_values_are_decoded_with_their_type() -> None:
    assert _value("none", 5) == (True, None)
    assert _value("the value 'true' of type 'bool'", None) == (True, True)
    assert _value("the value '100' of type 'signedint'", None) == (True, 100)
    assert _value("the value 'x.dlx' of type 'longstr'", None) == (True, "x.dlx")
    assert _value("'5'", 20) == (True, 5)  # same type as ours: the broker left the type out
    assert _value("'false'", True) == (True, False)
    assert _value("the value '1' of type 'table'", None) == (False, "1")


def test_ways_out_name_the_options_to_change() -> None:
    ways = ways_out("queue 'a'", ["x-delivery-limit is 5 on the broker, the code declares 20", "type is classic ..."])
    assert "set delivery_limit, queue_type on the tasks of queue 'a'" in ways[0]
    assert any("delete_queue 'a'" in w for w in ways)
    assert any("delete_exchange 'x'" in w for w in ways_out("exchange 'x'", ["type is topic ..."]))
