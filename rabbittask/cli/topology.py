"""`rabbittask topology`: the app's broker topology as RabbitMQ definitions."""

from __future__ import annotations

import json

import click

from rabbittask.cli.common import APP_OPTION, load_app
from rabbittask.topology import definitions


@click.group()
def topology() -> None:
    """Show the exchanges, queues and bindings an app uses."""


@topology.command()
@APP_OPTION
@click.option("--vhost", default="/", show_default=True, help="Virtual host written into the definitions.")
def export(app_spec: str, vhost: str) -> None:
    """Print the topology as definitions JSON (for `rabbitmqctl import_definitions`)."""
    app = load_app(app_spec)
    data = definitions(app.declarations(), vhost)
    if app.schedules:  # not a RabbitMQ object: import_definitions ignores the key, reviewers read it
        data["rabbittask_schedules"] = [e.definition() for _, e in sorted(app.schedules.items())]
    click.echo(json.dumps(data, indent=2, sort_keys=True))
