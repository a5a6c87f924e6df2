"""`rabbittask dlq`: list, show, replay and purge the dead-letter queue of a task queue."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rabbittask.cli.common import load_app
from rabbittask.errors import RabbitTaskError
from rabbittask.message import H_TRACEBACK
from rabbittask.ops.dlq import DeadLetter, DeadLetterQueue
from rabbittask.settings import Settings

QUEUE_OPTION = click.option("-Q", "--queue", required=True, help="The task queue whose <queue>.dlq to use.")
APP_OPTION = click.option(
    "-A",
    "--app",
    "app_spec",
    default=None,
    metavar="MODULE:ATTR",
    help="Take broker URL and exchange from this app (default: RABBITTASK_* environment variables).",
)


def _dlq(app_spec: str | None, queue: str) -> DeadLetterQueue:
    try:
        env_only: dict[str, Any] = {}
        settings = load_app(app_spec).settings if app_spec else Settings(**env_only)
    except ValueError as e:
        raise click.ClickException(f"invalid RABBITTASK_* settings: {e}") from None
    return DeadLetterQueue(settings, queue)


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
def ls(queue: str, app_spec: str | None, limit: int) -> None:
    """List dead letters: id, task, reason, attempts, age (the DLQ is left as it was)."""
    box = _dlq(app_spec, queue)
    console = _console()
    try:
        with _progress(console, "reading") as progress:
            letters, total = box.peek(limit, progress)
    except RabbitTaskError as e:
        raise click.ClickException(str(e)) from None
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


def _reason(letter: DeadLetter) -> str:
    if letter.exc_type:
        return f"{letter.reason}: {letter.exc_type}"
    return letter.reason


@dlq.command()
@click.argument("message_id")
@QUEUE_OPTION
@APP_OPTION
def show(message_id: str, queue: str, app_spec: str | None) -> None:
    """Show one dead letter: reason, exception, traceback, headers and body."""
    box = _dlq(app_spec, queue)
    console = _console()
    try:
        with _progress(console, "searching") as progress:
            letter = box.find(message_id, progress)
    except RabbitTaskError as e:
        raise click.ClickException(str(e)) from None
    if letter is None:
        raise click.ClickException(f"no message {message_id} in {box.name}")
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
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Replay at most this many (from the head).")
def replay(queue: str, app_spec: str | None, ids: tuple[str, ...], limit: int | None) -> None:
    """Send dead letters back to their task queue with attempts reset (confirmed, then acked)."""
    box = _dlq(app_spec, queue)
    console = _console()
    try:
        with _progress(console, "replaying") as progress:
            result = box.replay(ids, limit, progress)
    except RabbitTaskError as e:
        raise click.ClickException(str(e)) from None
    console.print(f"replayed {len(result.replayed)} message(s) from {box.name} to {queue}")
    if result.missing:
        raise click.ClickException(f"not found in {box.name}: {', '.join(result.missing)}")


@dlq.command()
@QUEUE_OPTION
@APP_OPTION
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def purge(queue: str, app_spec: str | None, yes: bool) -> None:
    """Delete every message of the dead-letter queue."""
    box = _dlq(app_spec, queue)
    try:
        if not yes:
            click.confirm(f"delete all {box.count()} message(s) of {box.name}?", abort=True)
        purged = box.purge()
    except RabbitTaskError as e:
        raise click.ClickException(str(e)) from None
    _console().print(f"purged {purged} message(s) from {box.name}")
