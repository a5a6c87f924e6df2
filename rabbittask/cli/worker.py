"""`rabbittask worker`: a supervisor that forks children; each consumes the task queues and runs the tasks."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

import click
from pydantic import ValidationError

from rabbittask.cli.common import APP_OPTION, load_app
from rabbittask.errors import RabbitTaskError, TopologyMismatch
from rabbittask.worker.exits import EXIT_CONFIG
from rabbittask.worker.options import WorkerOptions, describe
from rabbittask.worker.reload import AppLoader
from rabbittask.worker.supervisor import Supervisor
from rabbittask.worker.timeouts import consumer_timeout_problems

if TYPE_CHECKING:
    from rabbittask.app import App

log = logging.getLogger("rabbittask.worker")


def queues_to_consume(app: App, names: list[str]) -> list[str]:
    """The queues a worker consumes: `names` (all of the app's if none); `TopologyMismatch` for an unknown one."""
    unknown = [q for q in names if q not in app.queues]
    if unknown:
        known = ", ".join(sorted(app.queues)) or "(none)"
        raise TopologyMismatch(f"app {app.name!r} has no task on queue(s) {', '.join(unknown)}; known: {known}")
    return names or sorted(app.queues)


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


def _options(given: dict[str, Any]) -> WorkerOptions:
    """Flags given on the command line over `RABBITTASK_WORKER_*` variables over defaults."""
    try:
        return WorkerOptions(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise click.UsageError(f"invalid worker options: {problems}") from None


@click.command()
@APP_OPTION
@click.option("-Q", "--queues", default="", metavar="Q1,Q2", help="Queues to consume (default: all of the app's).")
@click.option("-c", "--concurrency", type=int, help=describe("concurrency") + " [default: 1]")
@click.option("--threads", type=int, help=describe("threads") + " [default: 1]")
@click.option("--inline-ms", type=float, metavar="MS", help=describe("inline_ms") + " [default: 1]")
@click.option("--prefetch", type=int, help=describe("prefetch"))
@click.option("--max-tasks-per-child", type=int, metavar="N", help=describe("max_tasks_per_child"))
@click.option(
    "--max-memory-per-child", "max_memory_per_child_mb", metavar="SIZE", help=describe("max_memory_per_child_mb")
)
@click.option(
    "--shutdown-timeout", "shutdown_timeout_s", type=float, help=describe("shutdown_timeout_s") + " [default: 30]"
)
@click.option(
    "--consumer-timeout", "consumer_timeout_s", type=float, help=describe("consumer_timeout_s") + " [default: 1800]"
)
@click.option("--metrics-port", type=int, metavar="PORT", help=describe("metrics_port"))
@click.option("--metrics-host", metavar="ADDRESS", help=describe("metrics_host") + " [default: 0.0.0.0]")
@click.option("--strict-timeouts", is_flag=True, default=None, help=describe("strict_timeouts"))
@click.option(
    "--loglevel", "-l", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True
)
def worker(app_spec: str, queues: str, loglevel: str, **given: Any) -> None:
    """Consume task queues in forked children and run the tasks; ack each message after its task finished.

    Signals: TERM/INT warm shutdown (a second one: cold), QUIT cold shutdown, HUP reload the code and
    replace the children one by one.
    """
    setup_logging(loglevel)
    options = _options(given)
    loader = AppLoader(app_spec, load_app)
    app = loader.load()
    names = [q.strip() for q in queues.split(",") if q.strip()]
    try:
        queues_used = queues_to_consume(app, names)  # before anything is forked
    except RabbitTaskError as e:
        raise click.ClickException(str(e)) from None
    problems = consumer_timeout_problems(app, queues_used, options)
    for problem in problems:
        log.warning("%s", problem)
    if problems and options.strict_timeouts:
        log.error("refusing to start (--strict-timeouts): fix the time limits above or the broker's consumer_timeout")
        sys.exit(EXIT_CONFIG)
    sys.exit(Supervisor(app, queues_used, options, reload_app=loader.reload).run())
