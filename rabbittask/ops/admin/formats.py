"""The topology as text: definitions JSON and YAML (and back), and a Markdown table for reviews.

Every renderer sorts what it writes and ends with a newline, so the same app gives byte-identical
output on every run and an export can be committed and diffed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Literal

import yaml

from rabbittask.errors import ConfigError
from rabbittask.topology import (
    BindingDecl,
    Declaration,
    ExchangeBindingDecl,
    ExchangeDecl,
    QueueDecl,
    binding_key,
    definitions,
    natural_key,
)

Format = Literal["definitions", "yaml", "markdown"]
FORMATS: tuple[Format, ...] = ("definitions", "yaml", "markdown")


def render(
    decls: Iterable[Declaration],
    fmt: Format,
    vhost: str = "/",
    title: str = "",
    schedules: list[dict[str, Any]] | None = None,
) -> str:
    """The declarations (and the app's schedules, if any) in format `fmt`."""
    decls = list(decls)
    data = definitions(decls, vhost)
    if schedules:  # not a RabbitMQ object: import_definitions ignores the key, reviewers read it
        data["rabbittask_schedules"] = schedules
    if fmt == "definitions":
        return json.dumps(data, indent=2, sort_keys=True) + "\n"
    if fmt == "yaml":
        return str(yaml.safe_dump(data, sort_keys=True, default_flow_style=False, width=1000))
    text = markdown(decls, vhost, title)
    if schedules:
        rows = [
            f"| {e['name']} | {e['task']} | {e['queue']} | {e.get('cron') or str(e.get('every_s')) + ' s'} |"
            for e in schedules
        ]
        text += "\n## Schedules\n\n| entry | task | queue | when |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"
    return text


def canonical(decls: Iterable[Declaration]) -> list[Declaration]:
    """The declarations in the order the definitions list them: exchanges, queues, bindings, each sorted.

    Names sort in natural order (the ladder's levels by their delay); bindings to queues and to
    exchanges sort together, by source, destination, destination type and routing key.
    """
    decls = list(decls)
    exchanges = sorted((d for d in decls if isinstance(d, ExchangeDecl)), key=lambda d: natural_key(d.name))
    queues = sorted((d for d in decls if isinstance(d, QueueDecl)), key=lambda d: natural_key(d.name))
    bindings = sorted(
        (d for d in decls if isinstance(d, BindingDecl | ExchangeBindingDecl)),
        key=lambda d: tuple(natural_key(part) for part in binding_key(d)),
    )
    return [*exchanges, *queues, *bindings]


def parse_definitions(text: str) -> tuple[str, list[Declaration]]:
    """Read definitions (JSON or YAML, as exported) back into `(vhost, declarations)`.

    Raises `ConfigError` for what rabbittask never declares (non-durable objects, bindings with
    arguments or to anything but a queue or an exchange, objects in more than one vhost), so a
    round trip cannot lose anything silently.
    """
    try:
        doc = yaml.safe_load(text)  # JSON is YAML: one reader for both
    except yaml.YAMLError as e:
        raise ConfigError(f"definitions are neither JSON nor YAML: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError("definitions must be a mapping with exchanges, queues and bindings")
    vhosts: set[str] = set()
    decls: list[Declaration] = []
    for x in doc.get("exchanges") or []:
        vhosts.add(x.get("vhost", "/"))
        _require_durable("exchange", x)
        decls.append(ExchangeDecl(x["name"], x.get("type", "direct"), dict(x.get("arguments") or {})))
    for q in doc.get("queues") or []:
        vhosts.add(q.get("vhost", "/"))
        _require_durable("queue", q)
        decls.append(QueueDecl(q["name"], dict(q.get("arguments") or {})))
    for b in doc.get("bindings") or []:
        vhosts.add(b.get("vhost", "/"))
        kind = b.get("destination_type", "queue")
        if kind not in ("queue", "exchange") or b.get("arguments"):
            raise ConfigError(
                f"binding {b!r}: rabbittask declares only bindings to queues and exchanges (the delay ladder's), "
                "without arguments"
            )
        binding = BindingDecl if kind == "queue" else ExchangeBindingDecl
        decls.append(binding(b["destination"], b["source"], b.get("routing_key", "")))
    if len(vhosts) > 1:
        raise ConfigError(f"definitions span several vhosts ({', '.join(sorted(vhosts))}); export one at a time")
    return (vhosts.pop() if vhosts else "/"), canonical(decls)


def _require_durable(kind: str, obj: dict[str, Any]) -> None:
    if not obj.get("durable", True) or obj.get("auto_delete", False):
        raise ConfigError(f"{kind} {obj.get('name')!r} is not durable or is auto-delete; rabbittask declares neither")


def markdown(decls: Iterable[Declaration], vhost: str = "/", title: str = "") -> str:
    """Tables a reviewer reads in a pull request: exchanges, queues, bindings, exchange-to-exchange bindings.

    The last table (the delay ladder's bindings from one level to the next) is left out when empty.
    """
    decls = canonical(decls)
    lines = [f"# RabbitMQ topology{f' of {title}' if title else ''} (vhost `{vhost}`)", ""]
    lines += ["## Exchanges", "", "| exchange | type | durable | arguments |", "|---|---|---|---|"]
    for d in decls:
        if isinstance(d, ExchangeDecl):
            lines.append(f"| {_code(d.name)} | {d.type} | yes | {_arguments(d.arguments)} |")
    lines += ["", "## Queues", "", "| queue | type | dead-letters to | arguments |", "|---|---|---|---|"]
    for d in decls:
        if isinstance(d, QueueDecl):
            rest = {k: v for k, v in d.arguments.items() if k not in _SHOWN_APART}
            lines.append(
                f"| {_code(d.name)} | {d.arguments.get('x-queue-type', 'classic')} | {_dead_letters(d.arguments)} "
                f"| {_arguments(rest)} |"
            )
    lines += ["", "## Bindings", "", "| exchange | routing key | queue |", "|---|---|---|"]
    for d in decls:
        if isinstance(d, BindingDecl):
            lines.append(f"| {_code(d.exchange)} | {_code(d.routing_key)} | {_code(d.queue)} |")
    exchange_bindings = [d for d in decls if isinstance(d, ExchangeBindingDecl)]
    if exchange_bindings:
        lines += ["", "## Exchange-to-exchange bindings", ""]
        lines += ["| source exchange | routing key | destination exchange |", "|---|---|---|"]
        for e in exchange_bindings:
            lines.append(f"| {_code(e.source)} | {_code(e.routing_key)} | {_code(e.destination)} |")
    return "\n".join(lines) + "\n"


_SHOWN_APART = frozenset({"x-queue-type", "x-dead-letter-exchange", "x-dead-letter-routing-key"})


def _dead_letters(args: dict[str, Any]) -> str:
    if "x-dead-letter-exchange" not in args:
        return "—"
    key = args.get("x-dead-letter-routing-key")
    return _code(args["x-dead-letter-exchange"]) + (f" (key {_code(key)})" if key is not None else "")


def _arguments(args: dict[str, Any]) -> str:
    return ", ".join(f"{_code(f'{k}={json.dumps(v)}')}" for k, v in sorted(args.items())) or "—"


def _code(text: str) -> str:
    """`text` as Markdown code in a table cell (a pipe would end the cell, a backtick the code span)."""
    if text == "":
        return "(empty)"
    text = str(text).replace("|", "\\|")
    fence = "``" if "`" in text else "`"
    return f"{fence} {text} {fence}" if fence == "``" else f"`{text}`"
