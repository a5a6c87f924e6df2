"""`rabbittask worker`: a supervisor that forks children; each consumes the task queues and runs the tasks."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click
from pydantic import ValidationError

import rabbittask
from rabbittask.cli.common import APP_OPTION, load_app, split_queues
from rabbittask.errors import RabbitTaskError, TopologyMismatch
from rabbittask.explain import describe as describe_error
from rabbittask.logs import LogFormat, setup_logging
from rabbittask.worker.banner import banner
from rabbittask.worker.exits import EXIT_CONFIG
from rabbittask.worker.options import WorkerOptions, describe
from rabbittask.worker.reload import AppLoader
from rabbittask.worker.supervisor import Supervisor
from rabbittask.worker.timeouts import broker_server, consumer_timeout_problems, consumer_timeouts

if TYPE_CHECKING:
    from rabbittask.app import App

log = logging.getLogger("rabbittask.worker")
FC = TypeVar("FC", bound=Callable[..., Any])


def queues_to_consume(app: App, names: list[str]) -> list[str]:
    """The queues a worker consumes: `names` (all of the app's if none); `TopologyMismatch` for an unknown one."""
    unknown = [q for q in names if q not in app.queues]
    if unknown:
        known = ", ".join(sorted(app.queues)) or "(none)"
        raise TopologyMismatch(f"app {app.name!r} has no task on queue(s) {', '.join(unknown)}; known: {known}")
    return names or sorted(app.queues)


def _options(given: dict[str, Any]) -> WorkerOptions:
    """Flags given on the command line over `RABBITTASK_WORKER_*` variables over defaults."""
    try:
        return WorkerOptions(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as e:
        prefix = "RABBITTASK_WORKER_"
        flags = {p.name: f"{'/'.join(p.opts)} ({prefix}{str(p.name).upper()})" for p in worker.params if p.name}
        raise click.UsageError(f"invalid worker options: {describe_error(e, prefix, flags)}") from None


def loglevel_option(help_text: str = "Log level.") -> Callable[[FC], FC]:
    """`--loglevel/-l`, as the worker and beat take it."""
    return click.option(
        "--loglevel",
        "-l",
        type=click.Choice(["debug", "info", "warning", "error"]),
        default="info",
        show_default=True,
        help=help_text,
    )


LOG_FORMAT_OPTION = click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    envvar="RABBITTASK_LOG_FORMAT",
    help="text: lines for a person; json: one JSON object per line for log pipelines. Also RABBITTASK_LOG_FORMAT.",
)


@click.command()
@APP_OPTION
@click.option(
    "-Q",
    "--queues",
    default="",
    metavar="Q1,Q2",
    help="Queues to consume, comma-separated (default: all of the app's).",
)
@click.option("-c", "--concurrency", type=int, help=describe("concurrency") + " [default: 1]")
@click.option("--autoscale", metavar="MAX,MIN", help=describe("autoscale"))
@click.option("--threads", type=int, help=describe("threads") + " [default: 1]")
@click.option("--inline-ms", type=float, metavar="MS", help=describe("inline_ms") + " [default: 1]")
@click.option("--prefetch", type=int, help=describe("prefetch"))
@click.option("--loop", type=click.Choice(["asyncio", "uvloop"]), help=describe("loop") + " [default: asyncio]")
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
@loglevel_option("Log level; at info a line for each task (succeeded, retried, failed, dead-lettered).")
@LOG_FORMAT_OPTION
def worker(app_spec: str, queues: str, loglevel: str, log_format: LogFormat, **given: Any) -> None:
    """Consume task queues in forked children and run the tasks; ack each message after its task finished.

    Signals: TERM/INT warm shutdown (a second one: cold), QUIT cold shutdown, HUP reload the code and
    replace the children one by one.
    """
    options = _options(given)
    if options.loop == "uvloop":
        try:
            import uvloop  # noqa: F401 - imported once here, before the fork: its pages are shared with the children
        except ImportError:
            raise click.ClickException(
                "--loop uvloop needs the uvloop package, which is not installed: pip install 'rabbittask[uvloop]' "
                "(or leave --loop at asyncio)"
            ) from None
    loader = AppLoader(app_spec, load_app)
    app = loader.load()
    try:
        queues_used = queues_to_consume(app, split_queues(queues))  # before anything is forked
    except RabbitTaskError as e:
        raise click.ClickException(str(e)) from None
    setup_logging(loglevel, log_format)  # once the command line is known to be right: its errors are not logs
    text, fields = banner(app, queues_used, options, rabbittask.__version__)
    log.info("%s", text, extra={"rt": fields})
    problems = consumer_timeout_problems(app, queues_used, options)
    if problems and (server := broker_server(app)) is not None and server.consumer_timeout_per_consumer:
        for queue, timeout_s in sorted(consumer_timeouts(app, queues_used, options).items()):
            log.info(
                "queue %r: its tasks may hold a message longer than the broker's consumer_timeout (%g s); "
                "its consumers ask for %g s of their own (x-consumer-timeout, RabbitMQ %s)",
                queue,
                options.consumer_timeout_s,
                timeout_s,
                server,
            )
        problems = []
    for problem in problems:
        log.warning("%s", problem)
    if problems and options.strict_timeouts:
        log.error("refusing to start (--strict-timeouts): fix the time limits above or the broker's consumer_timeout")
        sys.exit(EXIT_CONFIG)
    sys.exit(Supervisor(app, queues_used, options, reload_app=loader.reload).run())
