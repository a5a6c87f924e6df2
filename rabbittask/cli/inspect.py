"""`rabbittask inspect ping|active|scheduled|registered|stats|queues`: ask every worker child, name the silent ones."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from rabbittask.cli.common import APP_OPTION, load_app
from rabbittask.control.wire import INSPECT
from rabbittask.errors import RabbitTaskError

EXIT_MISSING = 1


def _destination(value: str | None) -> list[str] | None:
    if not value:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    bad = [n for n in names if n.count(":") != 1 or not n.rpartition(":")[2].isdigit()]
    if bad:
        raise click.BadParameter(f"{', '.join(bad)}: name workers as host:pid (e.g. web1:4242), comma-separated")
    return names


@click.command()
@click.argument("what", type=click.Choice(INSPECT))
@APP_OPTION
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Seconds to wait for the answers.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of text.")
@click.option(
    "--destination",
    "-d",
    default=None,
    help="Ask only these workers: host:pid of a worker (its supervisor) or of one child, comma-separated.",
)
def inspect(what: str, app_spec: str, timeout_s: float, as_json: bool, destination: str | None) -> None:
    """Ask every worker child; exit 1 when a child alive a moment ago did not answer (named as missing)."""
    app = load_app(app_spec)
    try:
        replies = getattr(app.control.inspect(timeout_s, _destination(destination)), what)()
    except RabbitTaskError as e:
        raise click.ClickException(str(e)) from None
    finally:
        app.close()
    data = replies.as_dict()
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        _print(data)
    if replies.missing:
        sys.exit(EXIT_MISSING)


def _print(data: dict[str, Any]) -> None:
    workers: dict[str, str] = data["workers"]
    if not data["replies"] and not data["errors"] and not data["missing"]:
        click.echo("no worker answered (and none was seen alive in the last few seconds)")
    for child in sorted(data["replies"]):
        reply = data["replies"][child]
        head = f"{child} (worker {workers.get(child, '?')})"
        if isinstance(reply, str):
            click.echo(f"{head}: {reply}")
        elif isinstance(reply, list):
            click.echo(f"{head}: {len(reply)}")
            for item in reply:
                click.echo(f"  {_line(item)}")
        else:
            click.echo(f"{head}:")
            for key, value in reply.items():
                click.echo(f"  {key}: {value}")
    for child, error in sorted(data["errors"].items()):
        click.echo(f"{child}: could not answer: {error}", err=True)
    for child in data["missing"]:
        click.echo(
            f"{child} (worker {workers.get(child, '?')}): MISSING, alive a moment ago but did not answer", err=True
        )


def _line(item: Any) -> str:
    if isinstance(item, dict):
        if "runtime_s" in item:
            return f"{item['name']} [{item['id']}] ({item['args']}) running {item['runtime_s']:.1f} s"
        return "  ".join(f"{k}={v}" for k, v in item.items())
    return str(item)
