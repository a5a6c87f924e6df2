"""Helpers for tests of rabbittask and of apps built on it.

`RabbitNode` (`nodes.py`) starts a throwaway RabbitMQ node a test may stop, kill, pause, restart
or cluster without touching any other broker; `probes.py` finds free ports, the RabbitMQ
binaries, and whether a broker answers at a URL. `NodeError` (from `rabbittask.errors`) is what
they raise when a node or a CLI command against it fails.
"""

from __future__ import annotations

from rabbittask.errors import NodeError
from rabbittask.testing.nodes import RabbitNode, TlsFiles
from rabbittask.testing.probes import broker_answers, free_port, rabbitmq_bin_dir

__all__ = ["NodeError", "RabbitNode", "TlsFiles", "broker_answers", "free_port", "rabbitmq_bin_dir"]
