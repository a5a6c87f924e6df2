"""The delay ladder as data: names, routing keys, and a simulation of the broker routing a delay through it."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rabbittask import App, ConfigError
from rabbittask.delays import (
    DELAY_BASE_MS,
    DELAY_LEVELS,
    MAX_DELAY_MS,
    delay_declarations,
    delay_entry,
    delay_exchange_name,
    delay_level_name,
    delay_names,
    delay_units,
    delivered_queue,
)
from rabbittask.topology import BindingDecl, Declaration, ExchangeBindingDecl, ExchangeDecl, QueueDecl, definitions


def topic_matches(pattern: str, key: str) -> bool:
    """RabbitMQ topic matching: `*` is exactly one word, `#` zero or more."""
    p, k = pattern.split("."), key.split(".")

    def match(i: int, j: int) -> bool:
        if i == len(p):
            return j == len(k)
        if p[i] == "#":
            return any(match(i + 1, jj) for jj in range(j, len(k) + 1))
        return j < len(k) and p[i] in ("*", k[j]) and match(i + 1, j + 1)

    return match(0, 0)


def walk(decls: list[Declaration], exchange: str, key: str) -> tuple[str, int]:
    """Follow a message through the ladder as the broker would: (task queue it lands in, ms it waited)."""
    queues = {d.name: d.arguments for d in decls if isinstance(d, QueueDecl)}
    waited, hops = 0, 0
    while True:
        hops += 1
        assert hops < 3 * DELAY_LEVELS, "routing loops"
        to_queues = [
            d.queue
            for d in decls
            if isinstance(d, BindingDecl) and d.exchange == exchange and topic_matches(d.routing_key, key)
        ]
        onward = [
            d.destination
            for d in decls
            if isinstance(d, ExchangeBindingDecl) and d.source == exchange and topic_matches(d.routing_key, key)
        ]
        assert len(to_queues) + len(onward) == 1, f"{exchange} routes {key} to {to_queues + onward}"
        if onward:
            exchange = onward[0]
            continue
        queue = to_queues[0]
        args = queues.get(queue, {})  # a task queue: no TTL, the message has arrived
        if "x-message-ttl" not in args:
            return queue, waited
        waited += args["x-message-ttl"]
        exchange = args["x-dead-letter-exchange"]  # the key is kept: no x-dead-letter-routing-key
        assert "x-dead-letter-routing-key" not in args


def test_topic_matching_helper_follows_rabbitmq() -> None:
    assert topic_matches("*.1.#", "0.1.0.q") and topic_matches("*.1.#", "0.1") and not topic_matches("*.1.#", "1.0.q")
    assert topic_matches("*.*.a.b", "0.1.a.b") and not topic_matches("*.*.a.b", "0.1.x.a.b")


@given(st.integers(min_value=1, max_value=MAX_DELAY_MS))
def test_every_delay_reaches_its_queue_after_its_delay_rounded_up(delay_ms: int) -> None:
    decls = delay_declarations("ex", ["emails", "a.b.c"])
    for queue in ("emails", "a.b.c"):
        exchange, key = delay_entry("ex", queue, delay_ms)
        landed, waited = walk(decls, exchange, key)
        assert landed == queue
        assert waited == math.ceil(delay_ms / DELAY_BASE_MS) * DELAY_BASE_MS
        assert delay_ms <= waited < delay_ms + DELAY_BASE_MS


def test_the_ladder_has_one_queue_per_level_with_one_fixed_ttl() -> None:
    decls = delay_declarations("rabbittask", ["emails"])
    ladder = [d for d in decls if isinstance(d, QueueDecl) and d.name in delay_names("rabbittask")]
    assert [q.name for q in ladder[:3]] == ["rabbittask.delay.100", "rabbittask.delay.200", "rabbittask.delay.400"]
    assert len(ladder) == DELAY_LEVELS and ladder[-1].arguments["x-message-ttl"] < 2**32
    assert ladder[1].arguments == {
        "x-queue-type": "quorum",
        "x-message-ttl": 200,
        "x-dead-letter-exchange": "rabbittask.delay.100",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    classic = delay_declarations("rabbittask", [], "classic")
    assert [d.arguments for d in classic if isinstance(d, QueueDecl)][0] == {
        "x-queue-type": "classic",
        "x-message-ttl": 100,
        "x-dead-letter-exchange": "rabbittask.delay",
    }
    types = {d.name: d.type for d in decls if isinstance(d, ExchangeDecl)}
    assert types.pop("rabbittask.unroutable") == "fanout"
    assert set(types.values()) == {"topic"} and delay_exchange_name("rabbittask") in types


def test_delays_round_up_and_cap_at_one_pass() -> None:
    assert delay_units(1) == 1 and delay_units(100) == 1 and delay_units(101) == 2 and delay_units(0) == 0
    assert delay_units(MAX_DELAY_MS * 10) == (1 << DELAY_LEVELS) - 1
    assert delay_entry("x", "q", 1000)[0] == delay_level_name("x", 3)  # 10 units: enters at the 800 ms level
    assert delay_entry("x", "q", 0) == (delay_exchange_name("x"), "0." * DELAY_LEVELS + "q")


def test_the_task_queue_of_a_delivered_message_is_found_behind_the_delay_bits() -> None:
    key = delay_entry("x", "a.b", 300)[1]
    assert delivered_queue("x", "x.delay", key) == "a.b"
    assert delivered_queue("x", "x.delay.100", key) == "a.b"  # dead-lettered there last
    assert delivered_queue("x", "x", "a.b") == "a.b" and delivered_queue("x", "", "a.b") == "a.b"


def test_app_topology_includes_the_ladder_and_exports_exchange_bindings() -> None:
    app = App("t")

    @app.task(queue="emails")
    def send() -> None: ...

    data = definitions(app.declarations())
    assert "rabbittask.delay.100" in [q["name"] for q in data["queues"]]
    e2e = [b for b in data["bindings"] if b["destination_type"] == "exchange"]
    assert len(e2e) == DELAY_LEVELS + 1  # each level on to the next, and the due exchange to its routing exchange
    assert {
        "source": "rabbittask.delay.due",
        "destination": "emails",
        "routing_key": "*." * DELAY_LEVELS + "emails",
    }.items() <= next(b for b in data["bindings"] if b["source"] == "rabbittask.delay.due").items()
    routing = next(e for e in data["exchanges"] if e["name"] == "rabbittask.delay.due")
    assert routing["arguments"] == {"alternate-exchange": "rabbittask.unroutable"}


def test_a_queue_name_with_a_topic_wildcard_word_is_refused() -> None:
    app = App("t")
    with pytest.raises(ConfigError, match="cannot receive delayed messages"):

        @app.task(queue="jobs.#")
        def f() -> None: ...
