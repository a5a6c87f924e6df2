"""`rabbittask dlq`: list, show, replay and purge the dead-letter queue of a task queue."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rabbittask.cli.common import load_app, split_queues
from rabbittask.errors import ConfigError, RabbitTaskError
from rabbittask.message import H_TRACEBACK
from rabbittask.ops.dlq import DeadLetter, DeadLetterQueue
from rabbittask.settings import ENV_PREFIX, Settings

QUEUE_OPTION = click.option(
    "-Q",
    "--queue",
    "queues",
    required=True,
    metavar="Q1,Q2",
    help="The task queue(s) whose <queue>.dlq to use, comma-separated (as for `rabbittask worker -Q`).",
)
APP_OPTION = click.option(
    "-A",
    "--app",
    "app_spec",
    default=None,
    metavar="MODULE:ATTR",
    help="Take broker URL and exchange from this app (default: RABBITTASK_* environment variables).",
)


@dataclass(frozen=True, slots=True)
class Target:
    """Where a dlq command works: the settings, and how the exchange was chosen (said by `replay`)."""

    settings: Settings
    exchange_source: str


def _target(app_spec: str | None) -> Target:
    if app_spec:
        app = load_app(app_spec)
        return Target(app.settings, f"exchange {app.settings.exchange!r} of app {app.name!r}")
    try:
        settings = Settings.read({}, "the dlq command (RABBITTASK_* environment variables)")
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    from_env = f"{ENV_PREFIX}EXCHANGE" in os.environ
    return Target(settings, f"exchange {settings.exchange!r} (from {ENV_PREFIX}EXCHANGE)" if from_env else "")


def _boxes(target: Target, queues: str) -> list[DeadLetterQueue]:
    names = split_queues(queues)
    if not names:
        raise click.UsageError("-Q names no queue: give one or more task queues, e.g. -Q emails,thumbs")
    return [DeadLetterQueue(target.settings, q) for q in names]


def _console() -> Console:
    return Console(highlight=False, soft_wrap=False)


@contextmanager
def _progress(console: Console, label: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on a terminal (none when piped), fed with (done, total)."""
    with Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as bar:
        job = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(job, completed=done, total=total)

        yield update


def human_age(seconds: float | None) -> str:
    """`42s`, `5m`, `3h`, `2d`; `?` if unknown."""
    if seconds is None:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


@click.group()
def dlq() -> None:
    """Inspect and replay dead letters (`<queue>.dlq`)."""


@dlq.command("ls")
@QUEUE_OPTION
@APP_OPTION
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="Show at most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts: one object per dead letter.")
def ls(queues: str, app_spec: str | None, limit: int, as_json: bool) -> None:
    """List dead letters: id, task, reason, attempts, age (the DLQ is left as it was)."""
    console = _console()
    found: list[tuple[DeadLetterQueue, list[DeadLetter], int]] = []
    for box in _boxes(_target(app_spec), queues):
        try:
            with _progress(console, f"reading {box.name}") as progress:
                letters, total = box.peek(limit, progress)
        except RabbitTaskError as e:
            raise click.ClickException(str(e)) from None
        found.append((box, letters, total))
    if as_json:
        rows = [_as_json(box, letter) for box, letters, _ in found for letter in letters]
        click.echo(json.dumps(rows, indent=2, default=_json_default))
        return
    for box, letters, total in found:
        _print_letters(console, box, letters, total)


def _print_letters(console: Console, box: DeadLetterQueue, letters: list[DeadLetter], total: int) -> None:
    if not letters:
        console.print(f"{box.name} is empty")
        return
    table = Table(title=f"{box.name}: {total} message(s)" + (f", first {len(letters)}" if total > len(letters) else ""))
    table.add_column("id", no_wrap=True)  # what `dlq show` and `dlq replay --id` take: never cut
    table.add_column("task", overflow="fold")
    table.add_column("reason", overflow="fold")
    table.add_column("attempts", justify="right")
    table.add_column("age", justify="right")
    for letter in letters:
        table.add_row(letter.id, letter.task, _reason(letter), str(letter.attempts), human_age(letter.age_s()))
    console.print(table)


def _as_json(box: DeadLetterQueue, letter: DeadLetter) -> dict[str, Any]:
    return {
        "queue": box.queue,
        "dlq": box.name,
        "id": letter.id,
        "task": letter.task,
        "reason": letter.reason,
        "exc_type": letter.exc_type or None,
        "exc_message": letter.exc_message or None,
        "attempts": letter.attempts,
        "failed_at": letter.failed_at,
        "age_s": letter.age_s(),
        "worker": letter.worker or None,
    }


def _reason(letter: DeadLetter) -> str:
    if letter.exc_type:
        return f"{letter.reason}: {letter.exc_type}"
    return letter.reason


@dlq.command()
@click.argument("message_id")
@QUEUE_OPTION
@APP_OPTION
def show(message_id: str, queues: str, app_spec: str | None) -> None:
    """Show one dead letter: reason, exception, traceback, headers and body."""
    console = _console()
    boxes = _boxes(_target(app_spec), queues)
    letter = None
    for box in boxes:
        try:
            with _progress(console, f"searching {box.name}") as progress:
                letter = box.find(message_id, progress)
        except RabbitTaskError as e:
            raise click.ClickException(str(e)) from None
        if letter is not None:
            break
    if letter is None:
        raise click.ClickException(f"no message {message_id} in {', '.join(b.name for b in boxes)}")
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column(overflow="fold")
    rows: list[tuple[str, str]] = [
        ("id", letter.id),
        ("task", letter.task),
        ("reason", letter.reason),
        ("exception", f"{letter.exc_type}: {letter.exc_message}" if letter.exc_type else letter.exc_message),
        ("attempts", str(letter.attempts)),
        ("age", human_age(letter.age_s())),
        ("worker", letter.worker),
    ]
    for key, value in rows:
        if value:
            summary.add_row(key, value)
    console.print(summary)
    console.print("[bold]headers[/bold]")
    shown = {k: v for k, v in letter.headers.items() if k != H_TRACEBACK}  # printed below, readable
    console.print_json(json.dumps(shown, default=_json_default, sort_keys=True))
    console.print("[bold]body[/bold]")
    try:
        console.print_json(letter.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        console.print(repr(letter.body[:2000]))
    if letter.traceback:
        console.print("[bold]traceback[/bold]")
        console.print(letter.traceback, markup=False)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


@dlq.command()
@QUEUE_OPTION
@APP_OPTION
@click.option("--id", "ids", multiple=True, metavar="ID", help="Replay only this message (repeatable).")
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, help="Replay at most this many from the head of each DLQ."
)
def replay(queues: str, app_spec: str | None, ids: tuple[str, ...], limit: int | None) -> None:
    """Send dead letters back to their task queue with attempts reset (confirmed, then acked).

    The copies go through the app's exchange: give -A (or set RABBITTASK_EXCHANGE).
    """
    target = _target(app_spec)
    if not target.exchange_source:
        raise click.UsageError(
            "dlq replay sends the messages back through the app's task exchange: give the app with -A "
            "module:attribute (e.g. -A shop.tasks:app), or set RABBITTASK_EXCHANGE to its exchange"
        )
    console = _console()
    missing = set(ids)
    boxes = _boxes(target, queues)
    for box in boxes:
        try:
            with _progress(console, f"replaying {box.name}") as progress:
                result = box.replay(sorted(missing) if ids else (), limit, progress)
        except RabbitTaskError as e:
            raise click.ClickException(str(e)) from None
        missing -= set(result.replayed)
        click.echo(  # not rich: a line for scripts and logs, never wrapped
            f"replayed {len(result.replayed)} message(s) from {box.name} to {box.queue} "
            f"through {target.exchange_source}"
        )
        if ids and not missing:
            break
    if missing:
        raise click.ClickException(f"not found in {', '.join(b.name for b in boxes)}: {', '.join(sorted(missing))}")


@dlq.command()
@QUEUE_OPTION
@APP_OPTION
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def purge(queues: str, app_spec: str | None, yes: bool) -> None:
    """Delete every message of the dead-letter queue(s)."""
    boxes = _boxes(_target(app_spec), queues)
    try:
        if not yes:
            counts = ", ".join(f"{box.count()} message(s) of {box.name}" for box in boxes)
            click.confirm(f"delete all {counts}?", abort=True)
        for box in boxes:
            click.echo(f"purged {box.purge()} message(s) from {box.name}")
    except RabbitTaskError as e:
        raise click.ClickException(str(e)) from None
