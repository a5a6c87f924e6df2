"""Completion counters shared between a drain's worker processes and the bench, at ~1 µs a task.

Each process that runs tasks maps its own 24-byte file `<dir>/<pid>.cnt` (no locks, no races):
completions, the monotonic time of its first task's start and of its last completion. The bench
sums the files. `time.monotonic_ns()` is one system-wide clock on Linux, so times compare
across processes. The directory comes from `BENCH_COUNTER_DIR`.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

LAYOUT = struct.Struct("<QQQ")  # count, first_start_ns, last_done_ns
ENV = "BENCH_COUNTER_DIR"


class Counter:
    """One process's slot. Call `start()` when a task starts and `done()` when it finishes."""

    def __init__(self, directory: str) -> None:
        fd = os.open(Path(directory) / f"{os.getpid()}.cnt", os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(fd, LAYOUT.size)
        self._map = mmap.mmap(fd, LAYOUT.size)
        os.close(fd)
        self.count = 0
        self.first_ns = 0

    def start(self) -> None:
        if not self.first_ns:
            self.first_ns = time.monotonic_ns()

    def done(self) -> None:
        self.count += 1
        LAYOUT.pack_into(self._map, 0, self.count, self.first_ns, time.monotonic_ns())


_counter: Counter | None = None
_pid = 0


def process_counter() -> Counter | None:
    """This process's counter (created after a fork too), or None outside a bench run."""
    global _counter, _pid
    if _pid != os.getpid():
        directory = os.environ.get(ENV)
        _counter = Counter(directory) if directory else None
        _pid = os.getpid()
    return _counter


@dataclass(frozen=True)
class Totals:
    count: int
    first_ns: int
    last_ns: int

    def rate(self) -> float:
        """Completions per second from the first task's start to the last completion."""
        span_s = (self.last_ns - self.first_ns) / 1e9
        return self.count / span_s if span_s > 0 else 0.0


def read_totals(directory: str) -> Totals:
    count, first, last = 0, 0, 0
    for path in Path(directory).glob("*.cnt"):
        c, f, la = LAYOUT.unpack(path.read_bytes()[: LAYOUT.size].ljust(LAYOUT.size, b"\0"))
        if c:
            count += c
            first = min(first, f) if first else f
            last = max(last, la)
    return Totals(count, first, last)
