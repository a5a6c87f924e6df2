"""`rabbittask topology`: export the app's broker topology, compare it with a broker, apply it.

Exit codes of `diff` and `apply`: 0 same / applied, 1 differs / conflicts (nothing changed),
2 the comparison could not be made (broker or management API unreachable, login refused).
"""

from __future__ import annotations

import click

from rabbittask.admin.formats import FORMATS, Format, render
from rabbittask.cli.common import APP_OPTION, load_app

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
def export(app_spec: str, fmt: Format, vhost: str) -> None:
    """Print the topology (sorted, byte-identical across runs, so it can be committed and diffed)."""
    app = load_app(app_spec)
    click.echo(render(app.declarations(), fmt, vhost, title=f"app `{app.name}`"), nl=False)
