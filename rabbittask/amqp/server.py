"""Which RabbitMQ a connection reached, and what that version does differently (docs/compatibility.md).

The broker names its version in the `version` server property of `connection.start`. `Server` turns
it into the few facts rabbittask acts on; `for_server` adapts declarations to them (or refuses what
that version cannot honour), at the one place every declaration passes through (publish/declare.py,
`topology apply`). An unknown or unreadable version is taken for 3.x: the arguments built for it are
the ones that were tested for real.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rabbittask.errors import ConfigError
from rabbittask.topology import Declaration, QueueDecl

_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")
UNLIMITED = -1  # `x-delivery-limit` of a quorum queue that must never drop a message (RabbitMQ 4.0+)


@dataclass(frozen=True, slots=True)
class Server:
    """A broker version, and what it changes for rabbittask."""

    version: tuple[int, int, int] = (3, 0, 0)

    @classmethod
    def parse(cls, text: object) -> Server:
        """From the `version` server property (`"4.1.2"`, `b"3.10.8"`); 3.x when it cannot be read."""
        if isinstance(text, bytes):
            text = text.decode("ascii", "replace")
        m = _VERSION.match(text) if isinstance(text, str) else None
        if m is None:
            return cls()
        return cls((int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)))

    @classmethod
    def of(cls, server_properties: Mapping[str, Any] | None) -> Server:
        """From a connection's server properties (pika: `connection._impl.server_properties`; aiormq: the same)."""
        return cls.parse((server_properties or {}).get("version"))

    def at_least(self, major: int, minor: int = 0) -> bool:
        return self.version[:2] >= (major, minor)

    @property
    def default_delivery_limit(self) -> int | None:
        """The delivery limit a quorum queue gets when none is declared: 20 since 4.0, none before."""
        return 20 if self.at_least(4) else None

    @property
    def quorum_priorities(self) -> int:
        """Priority levels a quorum queue keeps: none on 3.x, two (normal, high) on 4.0-4.2, 32 from 4.3."""
        return 32 if self.at_least(4, 3) else 2 if self.at_least(4) else 0

    @property
    def nack_counts_delivery(self) -> bool:
        """Whether `basic.nack` with requeue raises `x-delivery-count` (from 4.3 only `basic.reject` does)."""
        return not self.at_least(4, 3)

    @property
    def consumer_timeout_per_consumer(self) -> bool:
        """Whether a consumer can ask for its own timeout (`x-consumer-timeout`): from 3.11.15."""
        return self.version >= (3, 11, 15)

    @property
    def global_qos_allowed(self) -> bool:
        """Global (per-channel) QoS is refused by default from 4.3; rabbittask never uses it."""
        return not self.at_least(4, 3)

    def __str__(self) -> str:
        return ".".join(map(str, self.version))


def unlimited_arguments(arguments: Mapping[str, Any], server: Server) -> dict[str, Any]:
    """Arguments of a quorum queue that must never drop a message for being read or returned too often.

    On 3.x a quorum queue has no delivery limit unless one is declared. From 4.0 every quorum queue
    gets 20 by default, so a dead letter read 20 times by `dlq ls` (each read returns it) would be
    dropped, having no dead-letter exchange of its own: declare it unlimited (-1, understood from 4.0).
    """
    args = dict(arguments)
    if args.get("x-queue-type") == "quorum" and "x-delivery-limit" not in args and server.default_delivery_limit:
        args["x-delivery-limit"] = UNLIMITED
    return args


def for_server(decls: Iterable[Declaration], server: Server) -> list[Declaration]:
    """`decls` as this broker version needs them: queues marked `unlimited` get no default delivery limit.

    A quorum queue with priorities on a broker whose quorum queues have none (3.x) is a `ConfigError`,
    raised before the list is returned, so before anything is declared.
    """
    out: list[Declaration] = []
    for d in decls:
        if isinstance(d, QueueDecl) and d.quorum_priorities and not server.quorum_priorities:
            raise ConfigError(
                f"queue {d.name!r}: max_priority on a quorum queue needs RabbitMQ 4.0+, but the broker is "
                f"RabbitMQ {server}, whose quorum queues have no priorities; use queue_type='classic', "
                "or RabbitMQ 4.0+"
            )
        if isinstance(d, QueueDecl) and d.unlimited:
            d = dataclasses.replace(d, arguments=unlimited_arguments(d.arguments, server))
        out.append(d)
    return out
