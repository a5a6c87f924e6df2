"""One drain measurement, shared by the raw and rabbittask rows: pre-filled queue, worker processes, counters."""

from __future__ import annotations

import asyncio
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench import broker
from bench.procs import MemoryPeak, MemorySampler, stop, wait_count


@dataclass(frozen=True)
class DrainResult:
    rate: float  # completed tasks per second, first task start to last completion
    memory: MemoryPeak
    leftover: int  # messages still in the queue after the workers stopped; 0 when all were acked


def wait_ready_files(workdir: str, procs: list[subprocess.Popen[bytes]], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(list(Path(workdir).glob("*.ready"))) < len(procs):
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            raise RuntimeError("a raw consumer did not become ready")
        time.sleep(0.01)
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()


def measure(
    url: str, queue: str, n: int, workdir: str, procs: list[subprocess.Popen[bytes]], *, barrier: bool
) -> DrainResult:
    """Drain `n` pre-queued tasks with `procs` (already started); stop them; check the queue is empty.

    With `barrier`, the processes are raw consumers that wait for a go line once connected.
    """
    sampler = MemorySampler([p.pid for p in procs])
    try:
        sampler.start()
        if barrier:
            wait_ready_files(workdir, procs)
        totals = wait_count(workdir, n, procs, timeout_s=60 + n / 200)
        memory = sampler.finish()
    finally:
        stop(procs)
    leftover = asyncio.run(broker.check_empty(url, queue))
    return DrainResult(totals.rate(), memory, leftover)
