"""The `rabbittask` command line: `worker`, `topology`, `dlq`, `beat`."""

from __future__ import annotations

import click

from rabbittask.cli.beat import beat
from rabbittask.cli.dlq import dlq
from rabbittask.cli.topology import topology
from rabbittask.cli.worker import worker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rabbittask")
def main() -> None:
    """rabbittask: RabbitMQ-first tasks. Nothing confirmed is lost."""


main.add_command(worker)
main.add_command(topology)
main.add_command(dlq)
main.add_command(beat)
