"""`rabbittask beat`: run the app's schedules; start several replicas, one is active at a time."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from datetime import datetime

import click

from rabbittask.app import App
from rabbittask.beat.entry import ScheduleEntry
from rabbittask.beat.scheduler import Beat
from rabbittask.cli.common import APP_OPTION, load_app
from rabbittask.cli.worker import LOG_FORMAT_OPTION, loglevel_option
from rabbittask.errors import RabbitTaskError, TopologyMismatch
from rabbittask.logs import LogFormat, setup_logging

EXIT_CONFIG = 78  # sysexits EX_CONFIG: a restart would fail the same way


@click.command()
@APP_OPTION
@click.option("--list", "list_only", is_flag=True, help="Print the schedules and their next ticks, then exit.")
@click.option(
    "--poll-s",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="How often a standby replica tries to take the lock (the takeover delay after a crash).",
)
@click.option(
    "--heartbeat-s",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="AMQP heartbeat of beat's connection: an active replica whose network silently died frees the lock "
    "after about two heartbeats.",
)
@loglevel_option("Log level; at info a line for each tick sent and each takeover.")
@LOG_FORMAT_OPTION
def beat(app_spec: str, list_only: bool, poll_s: float, heartbeat_s: int, loglevel: str, log_format: LogFormat) -> None:
    """Send the app's periodic tasks. Run it on several hosts: one replica is active, the others take over."""
    app = load_app(app_spec)
    if list_only:
        click.echo(format_listing(app, time.time()))
        return
    setup_logging(loglevel, log_format)
    try:
        scheduler = Beat(app, poll_s=poll_s, heartbeat_s=heartbeat_s)
    except RabbitTaskError as e:
        raise click.ClickException(str(e)) from None
    sys.exit(asyncio.run(_run(scheduler)))


async def _run(scheduler: Beat) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, scheduler.stop)
    try:
        await scheduler.run()
    except TopologyMismatch as e:
        click.echo(f"error: {e}", err=True)
        return EXIT_CONFIG
    return 0


def format_listing(app: App, now: float) -> str:
    """The schedules of `app` as a table: next tick in the local and in the entry's time zone."""
    entries: list[ScheduleEntry] = list(app.schedules.values())
    if not entries:
        return f"app {app.name!r} has no schedules"
    header = ("NAME", "TASK", "QUEUE", "SCHEDULE", "NEXT (LOCAL)", "NEXT (ENTRY TZ)", "EXPIRES", "CATCH-UP")
    rows = [header]
    for e in sorted(entries, key=lambda e: e.name):
        nxt = e.next_after(now)
        rows.append(
            (
                e.name,
                e.task_name,
                e.queue,
                e.describe(),
                # the local zone's offset at that instant, not today's (the tick may be across a DST change)
                datetime.fromtimestamp(nxt).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"),
                datetime.fromtimestamp(nxt, e.zone).strftime("%Y-%m-%d %H:%M:%S %Z"),
                "-" if e.expires_s is None else f"{e.expires_s:g}s",
                e.catch_up if e.catch_up != "all" else f"all (max {e.catch_up_limit})",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
