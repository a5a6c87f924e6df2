"""Export formats: definitions JSON/YAML round trips, byte-stable output, the Markdown review table."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rabbittask import ConfigError
from rabbittask.admin.formats import canonical, markdown, parse_definitions, render
from rabbittask.topology import QueueSpec, declarations

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


@given(topologies, st.sampled_from(["/", "prod", "a/b"]), st.sampled_from(["definitions", "yaml"]))
def test_export_parses_back_to_the_same_declarations(
    topology: tuple[str, list[QueueSpec]], vhost: str, fmt: str
) -> None:
    exchange, specs = topology
    decls = declarations(exchange, specs)
    text = render(decls, fmt, vhost)  # type: ignore[arg-type]
    assert parse_definitions(text) == (vhost, canonical(decls))


@given(topologies, st.randoms(use_true_random=False))
def test_export_is_byte_identical_whatever_the_order_tasks_were_declared_in(
    topology: tuple[str, list[QueueSpec]], rnd: random.Random
) -> None:
    exchange, specs = topology
    shuffled = list(specs)
    rnd.shuffle(shuffled)
    for fmt in ("definitions", "yaml", "markdown"):
        first = render(declarations(exchange, specs), fmt)  # type: ignore[arg-type]
        assert render(declarations(exchange, shuffled), fmt) == first  # type: ignore[arg-type]
        assert first.endswith("\n")


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
        ('{"bindings": [{"source": "x", "destination": "y", "destination_type": "exchange"}]}', "queue bindings"),
        ("[1, 2]", "mapping"),
        ("{: nope", "neither JSON nor YAML"),
    ],
)
def test_definitions_rabbittask_never_writes_are_refused(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_definitions(text)
