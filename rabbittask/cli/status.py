"""`rabbittask status`: live workers (from their heartbeats) and the app's queues, as a table or JSON."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import click

from rabbittask.cli.common import APP_OPTION, load_app
from rabbittask.errors import RabbitTaskError
from rabbittask.ops.status import LISTEN_S, gather

EXIT_NO_CONSUMER = 1


@click.command()
@APP_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of tables.")
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(min=0),
    default=LISTEN_S,
    show_default=True,
    help="Seconds to listen for heartbeats.",
)
def status(app_spec: str, as_json: bool, wait_s: float) -> None:
    """Show live workers and queue depths; exit 1 when a queue has no consumer (or does not exist)."""
    app = load_app(app_spec)
    try:
        data = asyncio.run(gather(app, wait_s))
    except RabbitTaskError as e:
        raise click.ClickException(str(e)) from None
    finally:
        app.close()
    idle = [q["name"] for q in data["queues"] if not q["consumers"]]
    data["queues_without_consumers"] = idle
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        _print_tables(data)
        if idle:
            click.echo(why_exit_1(app_spec, data["queues"]), err=True)
    if idle:
        sys.exit(EXIT_NO_CONSUMER)


def why_exit_1(app_spec: str, queues: list[dict[str, Any]]) -> str:
    """The reason `status` exits 1, and what to start."""
    missing = [q["name"] for q in queues if not q["exists"]]
    unconsumed = [q["name"] for q in queues if q["exists"] and not q["consumers"]]
    reasons = []
    if unconsumed:
        reasons.append(f"no worker consumes {', '.join(unconsumed)}")
    if missing:
        reasons.append(
            f"{', '.join(missing)} {'does' if len(missing) == 1 else 'do'} not exist on the broker (a worker or "
            f"`rabbittask topology apply -A {app_spec}` declares them)"
        )
    idle = ",".join(unconsumed + missing)
    return f"exit status 1: {'; '.join(reasons)}. Start a worker: rabbittask worker -A {app_spec} -Q {idle}"


def _print_tables(data: dict[str, Any]) -> None:
    from rich.console import Console  # lazily: a worker never loads rich
    from rich.table import Table

    console = Console()
    workers = Table(title="Workers")
    for column in ("host", "pid", "queues", "children", "done", "failed", "retried", "uptime"):
        workers.add_column(column, justify="right" if column in ("pid", "children", "done", "failed") else "left")
    for w in data["workers"]:
        workers.add_row(
            w["host"],
            str(w["pid"]),
            ", ".join(w["queues"]),
            str(w["children"]),
            str(w["done"]),
            str(w["failed"]),
            str(w["retried"]),
            _duration(w["uptime_s"]),
        )
    console.print(workers if data["workers"] else "[yellow]no live workers (no heartbeat heard)[/yellow]")
    queues = Table(title="Queues")
    for column in ("queue", "ready", "unacked", "consumers", "dlq"):
        queues.add_column(column, justify="left" if column == "queue" else "right")
    for q in data["queues"]:
        if not q["exists"]:  # nothing to count: the same word in every column, not numbers that look real
            queues.add_row(q["name"], *["[red]missing[/red]"] * 4)
            continue
        consumers = str(q["consumers"]) if q["consumers"] else "[red]0[/red]"
        queues.add_row(q["name"], _number(q["ready"]), _number(q["unacked"]), consumers, _number(q["dlq_ready"]))
    console.print(queues)
    _print_extras(console, data)


def _print_extras(console: Any, data: dict[str, Any]) -> None:
    """The tables shown only when there is something in them: chords, partitions, unroutable messages."""
    from rich.table import Table

    if data.get("workflows"):
        chords = Table(title="Running chords")
        for column in ("chord", "members done", "total"):
            chords.add_column(column, justify="left" if column == "chord" else "right")
        for c in data["workflows"]:
            chords.add_row(c["id"], str(c["done"]), str(c["total"]))
        console.print(chords)
    partitioned = [p for q in data["queues"] for p in q.get("partitions", ())]
    if partitioned:
        table = Table(title="Partitions (partition_by / fair_by)")
        for column in ("partition", "ready", "consumers", "active on"):
            table.add_column(column, justify="right" if column in ("ready", "consumers") else "left")
        for p in partitioned:
            # A single-active-consumer partition is shown active on the child that took a message from it.
            table.add_row(p["name"], _number(p["ready"]), _number(p["consumers"]), p["active"] or "-")
        console.print(table)
    lost = data.get("unroutable") or {}
    if lost.get("ready"):
        console.print(
            f"[red]{lost['ready']} delayed message(s) came due for a queue that no longer exists[/red]: they wait in "
            f"{lost['queue']}, each with its routing key (the delay bits, then the queue it was for); declare that "
            "queue again and move them there (a shovel), or purge them"
        )


def _number(value: int | None) -> str:
    return "-" if value is None else str(value)


def _duration(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m{s:02d}s" if hours else f"{m}m{s:02d}s"
