"""`rabbittask revoke ID...`: revoke tasks durably (kept on the broker for `revoke_retention_s`)."""

from __future__ import annotations

import click

from rabbittask.cli.common import APP_OPTION, load_app
from rabbittask.errors import RabbitTaskError


@click.command()
@click.argument("task_ids", nargs=-1, required=True)
@APP_OPTION
@click.option(
    "--terminate",
    is_flag=True,
    help="Also stop runs under way: async tasks are cancelled, sync tasks stop at ctx.check_revoked() or their "
    "child is replaced after terminate_grace_s.",
)
def revoke(task_ids: tuple[str, ...], app_spec: str, terminate: bool) -> None:
    """Revoke tasks by id: one that has not started never runs, on any worker, even one started later."""
    app = load_app(app_spec)
    try:
        app.control.revoke(list(task_ids), terminate=terminate)
    except RabbitTaskError as e:
        raise click.ClickException(str(e)) from None
    finally:
        app.close()
    retention_h = app.settings.revoke_retention_s / 3600
    click.echo(f"revoked {len(task_ids)} task(s){' with terminate' if terminate else ''}; kept {retention_h:g} h")
