"""`rabbittask worker`: consume task queues and run their tasks."""

from __future__ import annotations

import asyncio
import logging
import sys

import click

from rabbittask.cli.common import APP_OPTION, load_app
from rabbittask.errors import RabbitTaskError
from rabbittask.settings import Settings
from rabbittask.worker.child import Child

PREFETCH_HELP = Settings.model_fields["prefetch"].description


def setup_logging(level: str) -> None:
    """Log lines with time, level, process and logger name."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if level.upper() != "DEBUG":
        # aiormq logs every broker-initiated close with a traceback; the worker logs one line saying
        # what happened and what it does about it.
        logging.getLogger("aiormq").setLevel(logging.CRITICAL)


@click.command()
@APP_OPTION
@click.option("-Q", "--queues", default="", metavar="Q1,Q2", help="Queues to consume (default: all of the app's).")
@click.option("--prefetch", type=click.IntRange(min=1), default=None, help=f"{PREFETCH_HELP} [default: 16]")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Threads that run sync tasks, per child.",
)
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds a warm shutdown waits for running tasks.",
)
@click.option(
    "--loglevel", "-l", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True
)
def worker(
    app_spec: str, queues: str, prefetch: int | None, threads: int, shutdown_timeout: float, loglevel: str
) -> None:
    """Consume task queues and run their tasks; ack each message after its task finished."""
    setup_logging(loglevel)
    app = load_app(app_spec)
    names = [q.strip() for q in queues.split(",") if q.strip()]
    try:
        child = Child(app, names, prefetch=prefetch, threads=threads, shutdown_timeout_s=shutdown_timeout)
    except RabbitTaskError as e:
        raise click.ClickException(str(e)) from None
    sys.exit(asyncio.run(child.run()))
