"""`rabbittask topology`: export the app's broker topology, compare it with a broker, apply it, shrink partitions.

Exit codes of `diff` and `apply`: 0 same / applied, 1 differs / conflicts (nothing changed),
2 the comparison could not be made (broker or management API unreachable, login refused).
"""

from __future__ import annotations

import re
import sys
from typing import NoReturn

import click
import pika.exceptions

from rabbittask.amqp.blocking import close_quietly, connect
from rabbittask.amqp.connect import vhost as vhost_of_url  # `vhost` is a command option here
from rabbittask.amqp.server import Server, for_server
from rabbittask.app import App
from rabbittask.cli.common import APP_OPTION, load_app
from rabbittask.errors import ConfigError, RabbitTaskError
from rabbittask.ops.admin.apply import Conflict, Plan, plan
from rabbittask.ops.admin.apply import apply as apply_declarations
from rabbittask.ops.admin.compare import compare, describe, ways_out
from rabbittask.ops.admin.formats import FORMATS, Format, render
from rabbittask.ops.admin.live import Management, read_passive
from rabbittask.ops.shrink import shrink as shrink_partitions
from rabbittask.settings import host_port, mask_url

EXIT_DIFFERENT = 1
EXIT_ERROR = 2


@click.group()
def topology() -> None:
    """Export, compare and apply the exchanges, queues and bindings an app uses."""


@topology.command()
@APP_OPTION
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="definitions",
    show_default=True,
    help="definitions: JSON for `rabbitmqctl import_definitions`; yaml: the same as YAML; "
    "markdown: tables for a pull request.",
)
@click.option("--vhost", default="/", show_default=True, help="Virtual host written into the definitions.")
@click.option(
    "--rabbitmq-version",
    "server_version",
    default="3.13",
    show_default=True,
    metavar="X.Y",
    help="The RabbitMQ version the topology is for, as a worker connected to it would declare it "
    "(from 4.0 dead-letter queues get x-delivery-limit=-1; a quorum queue with max_priority needs 4.0+).",
)
def export(app_spec: str, fmt: Format, vhost: str, server_version: str) -> None:
    """Print the topology (sorted, byte-identical across runs, so it can be committed and diffed)."""
    app = load_app(app_spec)
    if not re.fullmatch(r"\d+\.\d+(\.\d+)?", server_version):
        raise click.BadParameter(
            f"{server_version!r} is not a version such as 3.13 or 4.1", param_hint="--rabbitmq-version"
        )
    server = Server.parse(server_version)
    schedules = [e.definition() for _, e in sorted(app.schedules.items())]
    try:
        decls = for_server(app.declarations(), server)
    except ConfigError as e:  # a queue the version cannot take (quorum priorities on 3.x)
        _fail(f"{e} (for a 4.x broker, export with --rabbitmq-version 4.1)")
    click.echo(render(decls, fmt, vhost, title=f"app `{app.name}`", schedules=schedules), nl=False)


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {mask_url(message)}", err=True)
    sys.exit(EXIT_ERROR)


def _where(app: App, vhost: str) -> str:
    return f"{host_port(app.settings.broker_url)} vhost {vhost!r}"


@topology.command()
@APP_OPTION
@click.option("--dry-run", is_flag=True, help="Only say what would be created; change nothing.")
def apply(app_spec: str, dry_run: bool) -> None:
    """Declare the topology idempotently; on a conflict list each difference and the ways out, change nothing.

    Connects with RABBITTASK_BROKER_URL (the app's broker URL), e.g. as a deploy user. Exit status:
    0 applied (or nothing to do), 1 conflicts (nothing was changed), 2 error.
    """
    app = load_app(app_spec)
    decls = app.declarations()
    try:
        connection = connect(app.settings, "topology apply")
        try:
            found = plan(connection, decls)
            if found.conflicts:  # first: they decide, and the rest is a long list
                _print_conflicts(found.conflicts, app.settings.exchange)
            _print_plan(found, dry_run or bool(found.conflicts))
            if found.conflicts:
                click.echo(
                    f"nothing was changed: {len(found.conflicts)} conflict(s), listed first above "
                    f"({', '.join(c.obj for c in found.conflicts)})"
                )
                sys.exit(EXIT_DIFFERENT)
            if not dry_run:
                apply_declarations(connection, decls)
                click.echo(f"applied to {_where(app, vhost_of_url(app.settings.broker_url))}")
        finally:
            close_quietly(connection)
    except RabbitTaskError as e:
        _fail(str(e))


def _print_plan(found: Plan, hypothetical: bool) -> None:
    for obj in found.same:
        click.echo(f"  = {obj}: exists as declared")
    verb = "would declare" if hypothetical else "declare"
    for d in found.create:
        click.echo(f"  + {verb} {describe(d)}")


def _print_conflicts(conflicts: list[Conflict], exchange: str) -> None:
    click.echo(f"{len(conflicts)} conflict(s) with what the broker has:")
    for c in conflicts:
        click.echo(f"  ~ {c.obj}:")
        for text in sorted(c.differences):
            click.echo(f"      {text}")
        if not c.complete:
            click.echo("      (more differences may exist: `rabbittask topology diff --management-url` shows all)")
        click.echo("    safe ways out:")
        for way in ways_out(c.obj, c.differences, exchange):
            click.echo(f"      - {way}")


@topology.command()
@APP_OPTION
@click.option(
    "--management-url",
    default=None,
    metavar="URL",
    help="Management HTTP API, e.g. http://user:pass@host:15672/ (user and password default to the broker URL's). "
    "Without it only existence is checked, by passive declares.",
)
@click.option("--vhost", default=None, help="Virtual host to compare [default: the broker URL's].")
@click.option("--ignore-extra", is_flag=True, help="Do not count objects the code no longer declares as differences.")
def diff(app_spec: str, management_url: str | None, vhost: str | None, ignore_extra: bool) -> None:
    """Compare the code's topology with a live broker; exit 1 if they differ (a deploy gate).

    Exit status: 0 same, 1 different, 2 could not compare (unreachable, login refused).
    """
    app = load_app(app_spec)
    vhost = vhost or vhost_of_url(app.settings.broker_url)
    decls = app.declarations()
    try:
        if management_url:
            api = Management(management_url, app.settings.broker_url)
            live = api.read(vhost)
            decls = for_server(decls, Server.parse(api.get("overview").get("rabbitmq_version")))
            source = f"management API {Management(management_url).base} vhost {vhost!r}"
        else:
            connection = connect(app.settings, "topology diff")
            try:
                decls = for_server(decls, Server.of(connection._impl.server_properties))
                live = read_passive(connection, decls)
            finally:
                close_quietly(connection)
            source = f"{_where(app, vhost_of_url(app.settings.broker_url))} (passive declares)"
    except RabbitTaskError as e:
        _fail(str(e))
    differences, notes = compare(decls, live)
    if ignore_extra:
        differences = [d for d in differences if d.kind != "extra"]
    click.echo(f"code (app {app.name!r}) vs {source}:")
    for d in differences:
        click.echo(f"  {d}")
    for note in notes:
        click.echo(f"  note: {note}")
    if differences:
        click.echo(f"{len(differences)} difference(s)")
        sys.exit(EXIT_DIFFERENT)
    click.echo("no differences")


@topology.command()
@APP_OPTION
@click.option("--dry-run", is_flag=True, help="Only list the partitions that would go, and their messages.")
def shrink(app_spec: str, dry_run: bool) -> None:
    """After lowering a queue's `partitions`: move the messages of the partitions it no longer has into
    the current ones (each confirmed before its ack), then delete those partitions.

    Stop the workers of the old deploy first (a partition that is still consumed is refused). Exit status:
    0 done (or nothing to do), 2 error.
    """
    app = load_app(app_spec)
    try:
        connection = connect(app.settings, "topology shrink")
        try:
            retired = shrink_partitions(connection, app, dry_run=dry_run)
        finally:
            close_quietly(connection)
    except (RabbitTaskError, pika.exceptions.AMQPError) as e:
        _fail(mask_url(str(e)))
    for r in retired:
        done = (
            "would move {} message(s) to the current partitions and delete it"
            if dry_run
            else ("moved {} message(s) to the current partitions, deleted it")
        )
        click.echo(f"  - {r.queue}: {done.format(r.messages)}")
    click.echo(f"{len(retired)} partition(s) {'to retire' if dry_run else 'retired'}" if retired else "nothing to do")
