"""The app of `python -m bench.partitions`: no-op tasks on a plain, an ordered and a fair queue.

BENCH_PREFIX names the queues (one set per bench run); BENCH_MARK_DIR is where a task of tenant
`probe` writes the time it started (the fairness case measures that task's wait).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from rabbittask import App

PREFIX = os.environ.get("BENCH_PREFIX", "bench-part")
MARKS = Path(os.environ.get("BENCH_MARK_DIR", "/tmp/bench-part"))
WORK_S = float(os.environ.get("BENCH_WORK_S", "0"))
app = App("bench-partitions")


def _work(tenant: str) -> None:
    if tenant.startswith("probe"):
        (MARKS / f"{tenant}.{os.getpid()}").write_text(repr(time.time()))
    if WORK_S:
        time.sleep(WORK_S)


@app.task(queue=f"{PREFIX}.plain", name="bench.plain")
def plain(key: str, seq: int) -> None:
    _work(key)


@app.task(queue=f"{PREFIX}.ordered", name="bench.ordered", partition_by="key", partitions=8)
def ordered(key: str, seq: int) -> None:
    _work(key)


@app.task(queue=f"{PREFIX}.fair", name="bench.fair", fair_by="key", partitions=16)
def fair(key: str, seq: int) -> None:
    _work(key)
