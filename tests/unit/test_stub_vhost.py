"""The stub's virtual host: the app's declarations routed, expired and dead-lettered as RabbitMQ does."""

from __future__ import annotations

import pytest
from pamqp.commands import Basic

from rabbittask.delays import delay_declarations, delay_entry
from rabbittask.testing.vhost import VirtualHost, _topic
from rabbittask.topology import BindingDecl, ExchangeDecl, QueueDecl, QueueSpec, declarations, dlq_name

T0 = 1_000_000.0


def vhost(*specs: QueueSpec) -> VirtualHost:
    names = [s.name for s in specs]
    return VirtualHost(declarations("ex", list(specs)) + delay_declarations("ex", names))


def props(**headers: object) -> Basic.Properties:
    return Basic.Properties(message_id="m", message_type="t", headers=dict(headers) or None)


def publish_delayed(v: VirtualHost, queue: str, delay_ms: int, **headers: object) -> str:
    exchange, key = delay_entry("ex", queue, delay_ms)
    return v.publish(exchange, key, b"{}", props(**headers), now=T0, mandatory=True)


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "a.b.b.c", False),
        ("a.#", "a", True),
        ("#.c", "a.b.c", True),
        ("*.1.#", "0.1.0.q", True),
        ("*.1.#", "1.0.0.q", False),
        ("*.*.q.x", "0.0.q.x", True),  # a task queue with a dot in its name
    ],
)
def test_topic_patterns_match_as_amqp_says(pattern: str, key: str, matches: bool) -> None:
    assert _topic(tuple(pattern.split(".")), tuple(key.split("."))) is matches


@pytest.mark.parametrize(("delay_ms", "arrives_s"), [(100, 0.1), (150, 0.2), (1000, 1.0), (3_600_000, 3600.0)])
def test_a_delayed_message_reaches_its_queue_when_the_ladder_lets_it_and_not_before(
    delay_ms: int, arrives_s: float
) -> None:
    v = vhost(QueueSpec("jobs"))
    assert publish_delayed(v, "jobs", delay_ms) == "routed"
    v.expire(T0 + arrives_s - 0.001)
    assert not v.queues["jobs"].messages
    v.expire(T0 + arrives_s + 1e-6)  # each hop adds its TTL to a float time
    (msg,) = v.queues["jobs"].messages
    assert msg.enqueued_at == pytest.approx(T0 + arrives_s)
    deaths = msg.headers["x-death"]
    assert {d["reason"] for d in deaths} == {"expired"} and len(deaths) == bin(-(-delay_ms // 100)).count("1")


def test_a_delayed_message_whose_queue_is_gone_ends_in_the_unroutable_queue_not_dropped() -> None:
    # Given a delay to a queue that exists, and one to a queue no worker declared
    v = vhost(QueueSpec("jobs"))
    assert publish_delayed(v, "jobs", 300) == "routed"
    assert publish_delayed(v, "ghost", 300) == "routed"  # the ladder takes it: the broker confirms it
    # When both are due
    v.expire(T0 + 1)
    # Then the first reached its queue once, and the second waits in ex.unroutable instead of vanishing
    assert len(v.queues["jobs"].messages) == 1
    (lost,) = v.queues["ex.unroutable"].messages
    assert lost.routing_key.endswith(".ghost") and v.dropped == []


def test_a_copy_that_keeps_its_old_x_death_is_dropped_as_a_dead_letter_cycle() -> None:
    # The trap the worker's retry copies avoid by stripping x-death (outcome.copy_headers).
    v = vhost(QueueSpec("jobs"))
    publish_delayed(v, "jobs", 300)
    v.expire(T0 + 1)
    (first,) = v.queues["jobs"].messages
    assert publish_delayed(v, "jobs", 300, **first.headers) == "routed"
    v.expire(T0 + 2)
    assert len(v.queues["jobs"].messages) == 1  # the second never arrived
    (dropped, why) = v.dropped[0]
    assert "dead-letter cycle" in why


def test_a_quorum_queue_dead_letters_past_its_delivery_limit_with_the_brokers_reason() -> None:
    v = vhost(QueueSpec("jobs", delivery_limit=1))
    v.publish("ex", "jobs", b"{}", props(), now=T0, mandatory=True)
    queue = v.queues["jobs"]
    v.requeue(queue, queue.messages.popleft(), T0)
    assert queue.messages[0].returns == 1 and queue.messages[0].redelivered
    v.requeue(queue, queue.messages.popleft(), T0)
    (dead,) = v.queues[dlq_name("jobs")].messages
    assert dead.reason == "delivery_limit" and dead.headers["x-first-death-queue"] == "jobs"


def test_max_length_drops_the_head_into_the_dead_letter_queue_or_refuses_the_publish() -> None:
    v = vhost(QueueSpec("heads", queue_type="classic", max_length=1), QueueSpec("strict", max_length=1))
    for mid in ("a", "b"):
        v.publish("ex", "heads", b"{}", Basic.Properties(message_id=mid), now=T0, mandatory=True)
    assert [m.id for m in v.queues["heads"].messages] == ["b"]
    assert [m.reason for m in v.queues[dlq_name("heads")].messages] == ["maxlen"]
    assert v.publish("ex", "strict", b"{}", props(), now=T0, mandatory=True) == "routed"
    assert v.publish("ex", "strict", b"{}", props(), now=T0, mandatory=True) == "nacked"


def test_a_priority_queue_delivers_the_highest_priority_first() -> None:
    v = vhost(QueueSpec("p", queue_type="classic", max_priority=5))
    for mid, priority in (("low", 1), ("high", 9), ("mid", 3)):
        v.publish("ex", "p", b"{}", Basic.Properties(message_id=mid, priority=priority), now=T0, mandatory=True)
    queue = v.queues["p"]
    assert [m.id for m in (queue.take(), queue.take(), queue.take()) if m] == ["high", "mid", "low"]


def test_routing_follows_the_declarations_only() -> None:
    v = VirtualHost([ExchangeDecl("fan", "fanout"), QueueDecl("a"), QueueDecl("b"), BindingDecl("a", "fan", "")])
    assert v.publish("fan", "whatever", b"", props(), now=T0, mandatory=True) == "routed"
    assert v.publish("", "b", b"", props(), now=T0, mandatory=True) == "routed"  # the default exchange
    assert v.publish("", "c", b"", props(), now=T0, mandatory=True) == "unroutable"
    assert v.publish("missing", "a", b"", props(), now=T0, mandatory=True) == "no exchange"
    assert [len(v.queues[q].messages) for q in "ab"] == [1, 1]
