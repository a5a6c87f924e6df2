"""The pure side of `topology diff` and `apply`: comparing with a snapshot, reading 406 texts."""

from __future__ import annotations

import json
from typing import Any

from rabbittask.delays import delay_declarations
from rabbittask.ops.admin.apply import _value
from rabbittask.ops.admin.compare import Live, applicable_policies, compare, ways_out
from rabbittask.ops.admin.formats import render
from rabbittask.topology import Declaration, QueueSpec, declarations


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


def with_ladder(exchange: str, specs: list[QueueSpec]) -> list[Declaration]:
    """What `App.declarations()` returns: task queues, DLQs and the delay ladder."""
    return declarations(exchange, specs) + delay_declarations(exchange, [s.name for s in specs])


def test_the_delay_ladder_is_the_apps_own_and_compared_like_the_rest() -> None:
    decls = with_ladder("ex", [QueueSpec("a")])
    assert compare(decls, live_from(decls)) == ([], [])

    # Given a broker whose ladder lost one exchange-to-exchange binding, gained another, has a level
    # the code no longer declares, and a level queue with another TTL
    live = live_from(decls)
    assert live.bindings is not None
    live.bindings = [
        b for b in live.bindings if not (b["source"] == "ex.delay.400" and b["destination_type"] == "exchange")
    ]
    live.bindings.append(
        {"source": "ex.delay.100", "destination": "ex", "destination_type": "exchange", "routing_key": "#"}
    )
    live.exchanges["ex.delay.6710886400"] = {"name": "ex.delay.6710886400", "type": "topic"}
    live.queues["ex.delay.6710886400"] = {"name": "ex.delay.6710886400", "type": "quorum", "arguments": {}}
    live.bindings.append(
        {"source": "ex.delay.6710886400", "destination": "ex.delay.6710886400", "destination_type": "queue"}
    )
    live.queues["ex.delay.800"]["arguments"]["x-message-ttl"] = 1000  # type: ignore[index]

    diffs, _ = compare(decls, live)

    assert [str(d) for d in diffs] == [
        "~ queue 'ex.delay.800': x-message-ttl is 1000 on the broker, the code declares 800",
        "- binding 'ex.delay.400' -> exchange 'ex.delay.200' (key '*.*.0.#'): missing on the broker",
        "+ binding 'ex.delay.100' -> exchange 'ex' (key '#'): on the broker, not in the code",
        "+ binding 'ex.delay.6710886400' -> queue 'ex.delay.6710886400' (key ''): on the broker, not in the code",
        "+ queue 'ex.delay.6710886400': on the broker, not in the code",
        "+ exchange 'ex.delay.6710886400': on the broker, not in the code",
    ]


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
    assert "set delivery_limit=5, queue_type on the tasks of queue 'a' (the broker's values)" in ways[0]
    assert any("delete_queue 'a'" in w for w in ways)


def test_ways_out_give_the_broker_value_and_send_a_dead_letter_queue_to_its_task_queue() -> None:
    ways = ways_out("queue 'a.dlq'", ["type is classic on the broker, the code declares quorum"])
    assert ways == [
        "make the code match the broker: set queue_type='classic' on the tasks of queue 'a' (its dead-letter "
        "queue has the same type)",
        "or empty it first (`rabbittask dlq replay -Q a` or `dlq purge`), then `rabbitmqctl delete_queue 'a.dlq'` "
        "and apply again: the next dead letter is kept in the new one",
    ]
    durable = ways_out("queue 'b'", ["durable is false on the broker, the code declares true"])
    assert durable[0] == "rabbittask declares every queue durable, so the code cannot match the broker"
    fixed = ways_out("queue 'c'", ['x-dead-letter-exchange is "other" on the broker, the code declares "ex.dlx"'])
    assert fixed[0].startswith("rabbittask sets these arguments itself (they are not options)")
    assert any("delete_exchange 'x'" in w for w in ways_out("exchange 'x'", ["type is topic ..."]))


def test_ladder_objects_get_ladder_ways_out() -> None:
    ways = ways_out("queue 'ex.delay.800'", ["type is classic on the broker, the code declares quorum"], "ex")
    assert "set delay_queue_type (RABBITTASK_DELAY_QUEUE_TYPE)" in ways[0]
    assert "delete_queue 'ex.delay.800'" in ways[-1]
    ways = ways_out("queue 'ex.delay.800'", ["x-message-ttl is 1000 on the broker, the code declares 800"], "ex")
    assert "fixed by the ladder's layout" in ways[0]
    assert "delete_exchange 'ex.delay'" in ways_out("exchange 'ex.delay'", ["type is direct ..."], "ex")[0]
    # a task queue is not a ladder queue because its name has ".delay" in it
    assert "set delivery_limit" in ways_out("queue 'ex.delay.5'", ["x-delivery-limit is 5 ..."], "ex")[0]
