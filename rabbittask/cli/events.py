"""`rabbittask events`: search the task history the broker keeps (the `<exchange>.history` stream)."""

from __future__ import annotations

import datetime
import json
import time
from typing import Any

import click

from rabbittask.cli.common import APP_OPTION, load_app
from rabbittask.errors import RabbitTaskError
from rabbittask.history import stream
from rabbittask.history.query import STATES, Query, flatten, parse_time

CLOCK_SKEW_S = 60.0  # the stream is entered by the broker's clock, events carry the workers': start a bit earlier


@click.command()
@APP_OPTION
@click.option("--id", "task_id", help="Only this task id.")
@click.option("--task", help="Only this task name (e.g. shop.send_email).")
@click.option("--state", type=click.Choice(STATES), help="Only events of this state.")
@click.option("--worker", help="Only events of workers whose host:pid contains this.")
@click.option("--args", "args", help="Only tasks whose arguments (as sent, masked and cut) contain this.")
@click.option("--since", help="From this time: a duration ago (90s, 30m, 1h, 2d) or an ISO time. Default: all kept.")
@click.option("--until", help="Up to this time (same forms as --since).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object a line (JSON Lines) for scripts.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events as they come (stop with Ctrl-C).")
def events(
    app_spec: str,
    task_id: str | None,
    task: str | None,
    state: str | None,
    worker: str | None,
    args: str | None,
    since: str | None,
    until: str | None,
    as_json: bool,
    follow: bool,
) -> None:
    """Search past task events: received, started, succeeded, failed, retried, dead-lettered."""
    now = time.time()
    try:
        query = Query(
            task_id=task_id,
            task=task,
            state=state,
            worker=worker,
            args=args,
            since=parse_time(since, now) if since else None,
            until=parse_time(until, now) if until else None,
        )
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    app = load_app(app_spec)
    if not app.settings.history:
        raise click.ClickException(
            f"app {app.name!r} keeps no history (history=False): its workers send live events only"
        )
    offset: stream.Offset = "first"
    if query.since is not None:
        offset = datetime.datetime.fromtimestamp(query.since - CLOCK_SKEW_S, datetime.UTC)
    found = 0
    try:
        for message in stream.read(app.settings, offset, follow=follow):
            for event in flatten(message):
                if query.matches(event):
                    found += 1
                    click.echo(json.dumps(event) if as_json else line(event))
    except RabbitTaskError as e:
        raise click.ClickException(str(e)) from None
    except KeyboardInterrupt:
        pass
    finally:
        app.close()
    if not as_json and not follow:
        click.echo(f"{found} event(s)", err=True)


def line(event: dict[str, Any]) -> str:
    """One event as a line of text: time, state, task, id, worker, runtime, and why it failed."""
    ts = event.get("ts")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if isinstance(ts, int | float) else "?"
    parts = [when, f"{event.get('state', '?'):<13}", str(event.get("task", "?")), str(event.get("id", "?"))]
    parts.append(str(event.get("worker", "?")))
    if "runtime_s" in event:
        parts.append(f"{event['runtime_s']:.3f}s")
    if event.get("retry_in_s") is not None:
        parts.append(f"retry in {event['retry_in_s']}s")
    if event.get("exc_type"):
        parts.append(f"{event['exc_type']}: {event.get('exc_message', '')}")
    if event.get("args"):
        parts.append(f"args {event['args']}")
    return "  ".join(parts)
