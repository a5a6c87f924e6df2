"""Export formats: definitions JSON/YAML round trips, byte-stable output, the Markdown review table."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rabbittask import ConfigError
from rabbittask.delays import DELAY_LEVELS, delay_declarations
from rabbittask.ops.admin.formats import canonical, markdown, parse_definitions, render
from rabbittask.settings import QueueType
from rabbittask.topology import Declaration, ExchangeBindingDecl, QueueSpec, declarations, natural_key

names = st.from_regex(r"[a-z][a-z0-9_.:-]{0,30}", fullmatch=True).filter(lambda n: not n.startswith("amq."))


@st.composite
def queue_specs(draw: st.DrawFn) -> QueueSpec:
    name = draw(names)
    if draw(st.booleans()):
        max_length = draw(st.none() | st.integers(0, 10**6))
        return QueueSpec(
            name,
            "quorum",
            delivery_limit=draw(st.none() | st.integers(0, 100)),
            max_length=max_length,
            overflow=draw(st.none() | st.just("reject-publish")) if max_length is not None else None,
            single_active_consumer=draw(st.booleans()),
            message_ttl_ms=draw(st.none() | st.integers(0, 2**32 - 1)),
        )
    max_length = draw(st.none() | st.integers(0, 10**6))
    return QueueSpec(
        name,
        "classic",
        max_priority=draw(st.none() | st.integers(1, 255)),
        max_length=max_length,
        overflow=draw(st.sampled_from([None, "drop-head", "reject-publish", "reject-publish-dlx"]))
        if max_length is not None
        else None,
        single_active_consumer=draw(st.booleans()),
        message_ttl_ms=draw(st.none() | st.integers(0, 2**32 - 1)),
    )


topologies = st.tuples(names, st.lists(queue_specs(), max_size=6, unique_by=lambda s: s.name))
ladder_types = st.sampled_from(["quorum", "classic"])
# With the ladder an example renders 100+ objects (about 50 ms): no per-example deadline on a busy machine.
whole_apps = settings(deadline=None)


def app_declarations(exchange: str, specs: list[QueueSpec], ladder_type: QueueType) -> list[Declaration]:
    """What `App.declarations()` returns: task queues, DLQs and the delay ladder."""
    return declarations(exchange, specs) + delay_declarations(exchange, [s.name for s in specs], ladder_type)


@whole_apps
@given(topologies, ladder_types, st.sampled_from(["/", "prod", "a/b"]), st.sampled_from(["definitions", "yaml"]))
def test_export_parses_back_to_the_same_declarations(
    topology: tuple[str, list[QueueSpec]], ladder_type: QueueType, vhost: str, fmt: str
) -> None:
    exchange, specs = topology
    decls = app_declarations(exchange, specs, ladder_type)
    text = render(decls, fmt, vhost)  # type: ignore[arg-type]
    assert parse_definitions(text) == (vhost, canonical(decls))


@whole_apps
@given(topologies, ladder_types, st.randoms(use_true_random=False))
def test_export_is_byte_identical_whatever_the_order_tasks_were_declared_in(
    topology: tuple[str, list[QueueSpec]], ladder_type: QueueType, rnd: random.Random
) -> None:
    exchange, specs = topology
    shuffled = list(specs)
    rnd.shuffle(shuffled)
    for fmt in ("definitions", "yaml", "markdown"):
        first = render(app_declarations(exchange, specs, ladder_type), fmt)  # type: ignore[arg-type]
        assert render(app_declarations(exchange, shuffled, ladder_type), fmt) == first  # type: ignore[arg-type]
        assert first.endswith("\n")


def test_the_ladder_exports_its_exchange_to_exchange_bindings() -> None:
    doc = json.loads(render(app_declarations("ex", [QueueSpec("emails")], "quorum"), "definitions"))
    to_exchanges = [b for b in doc["bindings"] if b["destination_type"] == "exchange"]
    assert len(to_exchanges) == DELAY_LEVELS + 1
    assert to_exchanges[0]["source"] == "ex.delay" and to_exchanges[0]["destination"] == "ex.delay.due"
    assert to_exchanges[1] == {
        "source": "ex.delay.100",
        "vhost": "/",
        "destination": "ex.delay",
        "destination_type": "exchange",
        "routing_key": "0.#",
        "arguments": {},
    }
    level = next(q for q in doc["queues"] if q["name"] == "ex.delay.1600")
    assert level["arguments"] == {
        "x-queue-type": "quorum",
        "x-message-ttl": 1600,
        "x-dead-letter-exchange": "ex.delay.800",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    # levels in order of their delay, so a reviewer reads the ladder top to bottom
    levels = [x["name"] for x in doc["exchanges"] if x["name"].startswith("ex.delay.")]
    assert levels[:5] == ["ex.delay.100", "ex.delay.200", "ex.delay.400", "ex.delay.800", "ex.delay.1600"]
    _, parsed = parse_definitions(json.dumps(doc))
    assert ExchangeBindingDecl("ex.delay", "ex.delay.100", "0.#") in parsed


def test_markdown_lists_exchange_to_exchange_bindings_in_their_own_table() -> None:
    text = markdown(app_declarations("shop", [QueueSpec("emails")], "classic"))
    table = text.split("## Exchange-to-exchange bindings\n\n", 1)[1]
    assert table.startswith(
        "| source exchange | routing key | destination exchange |\n"
        "|---|---|---|\n"
        "| `shop.delay` | `#` | `shop.delay.due` |\n"
        "| `shop.delay.100` | `0.#` | `shop.delay` |\n"
        "| `shop.delay.200` | `*.0.#` | `shop.delay.100` |\n"
    )
    assert "| `shop.delay.200` | classic | `shop.delay.100` | `x-message-ttl=200` |" in text
    assert "| `shop.delay.due` | `*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.emails` | `emails` |" in text
    assert "Exchange-to-exchange" not in markdown(declarations("shop", [QueueSpec("emails")]))


def test_natural_order_is_total() -> None:
    names = ["a10", "a9", "a01", "a1", "a", "b", "a.delay", "a.delay.100"]
    assert sorted(names, key=natural_key) == ["a", "a01", "a1", "a9", "a10", "a.delay", "a.delay.100", "b"]


def test_definitions_have_what_import_definitions_reads() -> None:
    doc = json.loads(render(declarations("ex", [QueueSpec("emails")]), "definitions", "/"))
    assert sorted(doc) == ["bindings", "exchanges", "queues"]
    queue = next(q for q in doc["queues"] if q["name"] == "emails")
    assert queue == {
        "name": "emails",
        "vhost": "/",
        "durable": True,
        "auto_delete": False,
        "arguments": {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": "ex.dlx",
            "x-dead-letter-routing-key": "emails",
            "x-delivery-limit": 20,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    }
    assert {"source": "ex", "destination": "emails", "destination_type": "queue"}.items() <= doc["bindings"][0].items()


def test_markdown_export_is_a_review_table() -> None:
    specs = [QueueSpec("emails"), QueueSpec("thumbs", "classic", max_priority=5, single_active_consumer=True)]
    assert markdown(declarations("shop", specs), "/", "app `shop`") == (
        "# RabbitMQ topology of app `shop` (vhost `/`)\n"
        "\n"
        "## Exchanges\n"
        "\n"
        "| exchange | type | durable | arguments |\n"
        "|---|---|---|---|\n"
        "| `shop` | direct | yes | — |\n"
        "| `shop.dlx` | direct | yes | — |\n"
        "\n"
        "## Queues\n"
        "\n"
        "| queue | type | dead-letters to | arguments |\n"
        "|---|---|---|---|\n"
        '| `emails` | quorum | `shop.dlx` (key `emails`) | `x-dead-letter-strategy="at-least-once"`, '
        '`x-delivery-limit=20`, `x-overflow="reject-publish"` |\n'
        "| `emails.dlq` | quorum | — | — |\n"
        "| `thumbs` | classic | `shop.dlx` (key `thumbs`) | `x-max-priority=5`, `x-single-active-consumer=true` |\n"
        "| `thumbs.dlq` | classic | — | — |\n"
        "\n"
        "## Bindings\n"
        "\n"
        "| exchange | routing key | queue |\n"
        "|---|---|---|\n"
        "| `shop` | `emails` | `emails` |\n"
        "| `shop` | `thumbs` | `thumbs` |\n"
        "| `shop.dlx` | `emails` | `emails.dlq` |\n"
        "| `shop.dlx` | `thumbs` | `thumbs.dlq` |\n"
    )


def test_markdown_cells_cannot_be_broken_by_a_name() -> None:
    text = markdown(declarations("ex", [QueueSpec("a|b")]))
    assert "| `a\\|b` |" in text


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('{"queues": [{"name": "q", "vhost": "/", "durable": false}]}', "not durable"),
        ('{"queues": [{"name": "q", "vhost": "a"}, {"name": "r", "vhost": "b"}]}', "several vhosts"),
        ('{"bindings": [{"source": "x", "destination": "y", "destination_type": "stream"}]}', "queues and exchanges"),
        (
            '{"bindings": [{"source": "x", "destination": "y", "destination_type": "exchange", "arguments": {"a": 1}}]}',  # noqa: E501
            "without arguments",
        ),
        ("[1, 2]", "mapping"),
        ("{: nope", "neither JSON nor YAML"),
    ],
)
def test_definitions_rabbittask_never_writes_are_refused(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_definitions(text)
