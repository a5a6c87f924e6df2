"""Helpers for tests of rabbittask and of apps built on it (docs/testing.md is the guide).

Three levels: eager mode (`app.eager()`, `Eager`): each task runs at once as it is sent; a
`StubBroker`: the app's broker in memory, run by the worker's own stages on a virtual clock; and the
pytest plugin (`pytest_plugin.py`): a real broker, real worker processes, and a stub per test.

`RabbitNode` (`nodes.py`) starts a throwaway RabbitMQ node a test may stop, kill, pause, restart
or cluster without touching any other broker; `probes.py` finds free ports, the RabbitMQ
binaries, and whether a broker answers at a URL. `NodeError` (from `rabbittask.errors`) is what
they raise when a node or a CLI command against it fails.
"""

from __future__ import annotations

from rabbittask.errors import NodeError
from rabbittask.testing.eager import Eager
from rabbittask.testing.memory import MemoryBackend
from rabbittask.testing.nodes import RabbitNode, TlsFiles
from rabbittask.testing.probes import broker_answers, free_port, rabbitmq_bin_dir
from rabbittask.testing.stub import StubBroker
from rabbittask.testing.vhost import Message
from rabbittask.testing.workers import WorkerFactory, WorkerProcess

__all__ = [
    # in memory
    "StubBroker",
    "Eager",
    "Message",
    "MemoryBackend",
    # real brokers and workers
    "WorkerProcess",
    "WorkerFactory",
    "RabbitNode",
    "TlsFiles",
    "NodeError",
    "broker_answers",
    "free_port",
    "rabbitmq_bin_dir",
]
