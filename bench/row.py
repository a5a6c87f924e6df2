"""What every row function gets (`RowContext`) and returns (`Measurement`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bench.procs import MemoryPeak


@dataclass
class RowContext:
    url: str
    queue: str  # a fresh, namespaced name; raw rows declare it, rabbittask rows let the app declare it
    queue_type: str  # "quorum" or "classic"
    n: int  # messages or calls in this row
    workdir: str  # a fresh temporary directory: counters and worker logs
    prefix: str  # `bench.<pid>.`: every name this run declares starts with it
    delete_queues: list[str] = field(default_factory=list)
    delete_exchanges: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Measurement:
    value: float  # msg/s, or p50 ms for the round-trip case
    p99_ms: float | None = None
    memory: MemoryPeak | None = None
    leftover: int = 0  # messages left in the queue after a drain


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]
