"""Run settings from the environment, message counts, and the namespace for everything declared."""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
FULL_N = 20_000  # the drain and batch cases; the others scale from it

# A small JSON body the size of a task envelope, so raw rows do not win on a smaller payload.
BODY = b'{"v":1,"id":"00000000000000000000000000000000","task":"bench.tasks.noop","args":[0],"kwargs":{}}'


def broker_url() -> str:
    return os.environ.get("BENCH_BROKER_URL") or os.environ.get("RABBITTASK_BROKER_URL") or DEFAULT_URL


@dataclass(frozen=True)
class Counts:
    """Message counts per case; `BENCH_N` sets `batch` and the others follow in proportion."""

    batch: int = FULL_N  # A2, B1, B2
    sequential: int = 5_000  # A1
    calls: int = 500  # C

    @classmethod
    def from_env(cls) -> Counts:
        n = int(os.environ.get("BENCH_N", FULL_N))
        return cls(batch=n, sequential=max(50, n // 4), calls=max(20, n // 40))


def default_reps() -> int:
    return int(os.environ.get("BENCH_REPS", "3"))


class Names:
    """Queue names under `bench.<pid>.`, unique per row, so nothing collides with other users."""

    def __init__(self) -> None:
        self.prefix = f"bench.{os.getpid()}."
        self._seq = 0

    def queue(self, label: str) -> str:
        self._seq += 1
        return f"{self.prefix}{label}.{self._seq}"
