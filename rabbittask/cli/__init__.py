"""The `rabbittask` command line: `worker`, `topology`, `dlq`, `beat`, `status`, `events`, `inspect`, `revoke`,
`dashboard`.

Commands are imported when they run: a worker's supervisor (and so every forked child) never
loads what only `topology` (yaml), `dlq` (rich), `beat` (croniter) or `dashboard` (Starlette) need.
"""

from __future__ import annotations

import importlib
import logging

import click

COMMANDS = {
    "worker": ("rabbittask.cli.worker", "worker", "Consume task queues and run their tasks."),
    "topology": ("rabbittask.cli.topology", "topology", "Export, apply and diff the broker topology."),
    "dlq": ("rabbittask.cli.dlq", "dlq", "Inspect, replay and purge dead-letter queues."),
    "beat": ("rabbittask.cli.beat", "beat", "Run the periodic-task scheduler."),
    "status": ("rabbittask.cli.status", "status", "Show live workers and queue depths."),
    "events": ("rabbittask.cli.events", "events", "Search past task events (the history the broker keeps)."),
    "inspect": ("rabbittask.cli.inspect", "inspect", "Ask every worker child what it runs, holds and knows."),
    "revoke": ("rabbittask.cli.revoke", "revoke", "Revoke tasks by id, durably (optionally stop them)."),
    "dashboard": ("rabbittask.cli.dashboard", "dashboard", "Serve the web dashboard (needs rabbittask[dashboard])."),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[cmd_name]
        command = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][2]) for name in sorted(COMMANDS)])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rabbittask")
def main() -> None:
    """rabbittask: RabbitMQ-first tasks. Nothing confirmed is lost."""
    # aiormq logs each failed connect with its internals; every command says what happened in its own words.
    logging.getLogger("aiormq").setLevel(logging.CRITICAL)
