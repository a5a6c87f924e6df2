"""The supervisor's pool: its children as it sees them, and how many it wants (`--autoscale`, pool grow/shrink).

Each child tells the supervisor its load with one byte on its pipe (process.py), when it changes:
`BUSY` (every task slot is taken and messages wait for one: the queue has a backlog for it),
`WORKING`, or `IDLE` (it holds no message). With `--autoscale MAX,MIN` the pool grows by one
child every `GROW_EVERY_S` while every child is busy, up to MAX, and shrinks by one every
`SHRINK_EVERY_S` while a child has been idle for `IDLE_S`, down to MIN; the child that goes is an
idle one, retired (it holds nothing, so nothing is handed back). `app.control.pool_grow(n)` and
`pool_shrink(n)` move the target by hand, within the autoscale bounds if there are any. Nothing
here reads the broker: a child's load says what a queue depth would, for the queues it consumes,
and works the same on quorum and classic queues (no global QoS is involved).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

BUSY = b"B"
WORKING = b"W"
IDLE = b"I"
GROW = b"+"  # pool_grow by one (from child 1's control plane)
SHRINK = b"-"
GROW_EVERY_S = 1.0
SHRINK_EVERY_S = 1.0
IDLE_S = 5.0


@dataclass(slots=True)
class ChildProc:
    """The supervisor's view of one child."""

    pid: int
    number: int
    pipe: int  # read end: READY / RETIRING bytes, EOF when it exits
    started_at: float
    ready: bool = False
    retiring: bool = False
    replacing: int = 0  # pid of the child it takes over from in a rolling restart (until it is ready)
    consuming: bool = False  # its consumers are attached now (reported with --metrics-port only)
    load: bytes = IDLE  # BUSY, WORKING or IDLE, as it last said
    load_since: float = field(default_factory=time.monotonic)

    def heard(self, data: bytes) -> None:
        """Take the last load byte of `data`, if any."""
        last = max(data.rfind(BUSY), data.rfind(WORKING), data.rfind(IDLE))
        if last >= 0 and data[last : last + 1] != self.load:
            self.load, self.load_since = data[last : last + 1], time.monotonic()


def parse_autoscale(text: str) -> tuple[int, int]:
    """`"8,2"` -> (8, 2): at most 8 children, at least 2; `ValueError` saying what is allowed."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"--autoscale {text!r} is not MAX,MIN: give two whole numbers, e.g. 8,2")
    most, least = int(parts[0]), int(parts[1])
    if not 1 <= least <= most:
        raise ValueError(f"--autoscale {text!r}: need 1 <= MIN <= MAX (MAX first, as Celery's --autoscale)")
    return most, least


class Pool:
    """How many children the supervisor wants now, and which to retire when it wants fewer."""

    def __init__(self, concurrency: int, autoscale: tuple[int, int] | None = None) -> None:
        self.autoscale = autoscale
        self.most: float = autoscale[0] if autoscale is not None else math.inf
        self.least: int = autoscale[1] if autoscale is not None else 1
        self.target = int(min(max(concurrency, self.least), self.most))
        self._changed_at = 0.0

    def grow(self, n: int) -> int:
        """Want `n` more children (within the bounds); the new target."""
        self.target = int(min(self.target + max(0, n), self.most))
        return self.target

    def shrink(self, n: int) -> int:
        """Want `n` fewer children (within the bounds); the new target."""
        self.target = int(max(self.target - max(0, n), self.least))
        return self.target

    def tick(self, children: Sequence[ChildProc], now: float) -> list[ChildProc]:
        """Autoscale by the children's loads; the children to retire now (idle ones first)."""
        active = [c for c in children if not c.retiring]
        if self.autoscale is not None and active and len(active) >= self.target:
            if now - self._changed_at >= GROW_EVERY_S and all(c.load == BUSY for c in active):
                if self.target < self.most:
                    self.target += 1
                    self._changed_at = now
            elif now - self._changed_at >= SHRINK_EVERY_S and self.target > self.least:
                if any(c.load == IDLE and now - c.load_since >= IDLE_S for c in active):
                    self.target -= 1
                    self._changed_at = now
        surplus = len(active) - self.target
        if surplus <= 0:
            return []
        order = sorted(active, key=lambda c: (c.load != IDLE, c.load != WORKING, c.load_since))
        return order[:surplus]
