"""Worker options: one frozen model, read from `rabbittask worker` flags and `RABBITTASK_WORKER_*` variables.

The CLI help is derived from the field descriptions, so flags, environment and docs cannot drift apart.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_SIZE = re.compile(r"^\s*(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNIT_MB = {"": 1.0, "k": 1 / 1024, "m": 1.0, "g": 1024.0, "t": 1024.0**2}
RABBITMQ_CONSUMER_TIMEOUT_S = 1800.0  # RabbitMQ's default consumer_timeout (30 min) since 3.8.15


def parse_size_mb(text: str) -> float:
    """Parse a memory size such as `300MB`, `1.5G`, `512MiB` or `300` (MB) into MB (2**20 bytes).

    K, M, G and T are binary multiples, with or without `B`/`iB`: memory is counted in pages, as `ps` and
    `psutil` report it, and nobody means 300,000,000 bytes by "300MB" of RSS.
    """
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a memory size: use a number with an optional unit, e.g. 300MB or 1.5GB")
    return float(match["number"]) * _UNIT_MB[match["unit"].lower()]


class WorkerOptions(BaseSettings):
    """How `rabbittask worker` runs its children; every field can be set as `RABBITTASK_WORKER_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="RABBITTASK_WORKER_", frozen=True, extra="forbid")

    concurrency: int = Field(1, ge=1, description="Child processes; each has its own connection and consumes.")
    autoscale: str | None = Field(
        None,
        description="MAX,MIN: grow the children toward MAX while every child is busy with a backlog, shrink toward "
        "MIN when they are idle (one child a second; idle 5 s), e.g. 8,2.",
    )
    threads: int = Field(1, ge=1, description="Threads that run sync tasks, per child.")
    inline_ms: float = Field(
        1.0,
        ge=0,
        description="With one thread, sync tasks whose runs all finish within this many milliseconds run on the "
        "child's event loop, saving the thread hand-over (0: never).",
    )
    prefetch: int | None = Field(
        None,
        ge=1,
        description="Pin the unacked messages each child's consumer may hold (default: adaptive, from the app's "
        "prefetch, 16, up to 1024 while tasks prove short).",
    )
    max_tasks_per_child: int = Field(
        0, ge=0, description="Replace a child after it received this many messages (0: never)."
    )
    max_memory_per_child_mb: float = Field(
        0.0,
        ge=0,
        description="Replace a child whose RSS grows above this, checked after tasks, e.g. 300MB (0: no limit).",
    )
    loop: Literal["asyncio", "uvloop"] = Field(
        "asyncio",
        description="The children's event loop: asyncio, or uvloop (less CPU per message; the uvloop extra: "
        "pip install 'rabbittask[uvloop]').",
    )
    shutdown_timeout_s: float = Field(30.0, ge=0, description="Seconds a warm shutdown waits for running tasks.")
    consumer_timeout_s: float = Field(
        RABBITMQ_CONSUMER_TIMEOUT_S,
        gt=0,
        description="The broker's consumer_timeout in seconds, checked against task time limits at start-up.",
    )
    strict_timeouts: bool = Field(
        False, description="Refuse to start (instead of warning) when a time limit exceeds the consumer timeout."
    )

    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Serve Prometheus /metrics (summed over the children), /healthz and /readyz on this port.",
    )
    metrics_host: str = Field("0.0.0.0", description="Address the metrics port binds to.")  # noqa: S104 - probes

    @field_validator("autoscale")
    @classmethod
    def _autoscale(cls, value: str | None) -> str | None:
        if value is not None:
            from rabbittask.worker.pool import parse_autoscale

            parse_autoscale(value)
        return value

    @field_validator("max_memory_per_child_mb", mode="before")
    @classmethod
    def _memory_units(cls, value: Any) -> Any:
        return parse_size_mb(value) if isinstance(value, str) else value

    @property
    def max_memory_bytes(self) -> int:
        """The memory limit in bytes (0: none)."""
        return int(self.max_memory_per_child_mb * 2**20)


def describe(field: str) -> str:
    """The description of a field, for the CLI help."""
    return WorkerOptions.model_fields[field].description or ""
