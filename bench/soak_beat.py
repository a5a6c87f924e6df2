"""The soak's periodic ticks (bench/soak.py): 2 `rabbittask beat` replicas, one on each worker host, sending
`ledger.tick` every second (tests/apps/ledger_app.py, `catch_up="all"`), and the fault that kills one.

Judged as docs/scheduling.md promises: no slot skipped between the first and the last tick; a slot run twice
only where the worker redelivered it, or where beat repeated it after a takeover (at most one a takeover).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.workers import ROOT, WorkerProcess

if TYPE_CHECKING:
    from bench.soak import Soak

ACTIVE = re.compile(r"beat \S+ is the active scheduler")


class BeatReplica(WorkerProcess):
    """`rabbittask beat -A <app>` under `wrap` (a host's `ip netns exec`), its log in `log_path`."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, wrap: list[str]) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([*wrap, sys.executable, "-m", "rabbittask", "beat", *args], env=env, cwd=ROOT,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


class Beats:
    """Two beat replicas for the whole soak; the ledger's `tick` records judge them."""

    name = "beat"

    def __init__(self) -> None:
        self.logs: list[Path] = []

    def run(self, soak: Soak, seconds: float) -> None:
        assert soak.start_beat is not None
        soak.beats = [soak.start_beat(i) for i in range(2)]
        soak.stop.wait()
        for beat in soak.beats:
            beat.stop()

    def takeovers(self, soak: Soak) -> int:
        """Times a replica became active after the first."""
        texts = [p.read_text(errors="replace") for p in soak.directory.glob("beat-*.log")]
        return max(0, sum(len(ACTIVE.findall(t)) for t in texts) - 1)

    def figures(self, soak: Soak) -> dict[str, str]:
        runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in soak.ledger.records():
            if r["event"] == "tick":
                runs[str(r["key"])].append(r)
        slots = sorted(int(datetime.fromisoformat(k.split("@", 1)[1].replace("Z", "+00:00")).timestamp()) for k in runs)
        missing = (slots[-1] - slots[0] + 1 - len(slots)) if slots else 0
        # A redelivered run explains one extra run of its slot, whichever came first: a worker stopped
        # (SIGSTOP) holding a tick runs it when it resumes, after the broker redelivered it elsewhere.
        redelivered = sum(min(len(rs) - 1, sum(1 for r in rs if r["redelivered"])) for rs in runs.values())
        repeated = sum(len(rs) - 1 for rs in runs.values()) - redelivered
        takeovers = self.takeovers(soak)
        if not slots:
            soak.problems.append("beat sent no tick")
        if missing:
            soak.problems.append(f"beat skipped {missing} tick(s)")
        if repeated > takeovers:
            soak.problems.append(f"beat repeated {repeated} tick(s) in {takeovers} takeover(s)")
        return {"beat ticks": f"{len(slots)} slots of 1 s, skipped {missing}; run twice: {redelivered} redelivered, "
                              f"{repeated} repeated by beat in {takeovers} takeovers (at most 1 each)"}  # fmt: skip


def kill_beat(soak: Soak) -> str:
    """`kill -9` of a beat replica (either, at random: the active one or the standby), restarted on its host."""
    if not soak.beats or soak.start_beat is None:
        return "kill -9 beat replica: none started yet"
    i = soak.rng.randrange(len(soak.beats))
    beat = soak.beats[i]
    os.kill(beat.proc.pid, signal.SIGKILL)
    beat.stop()
    time.sleep(1)
    soak.beats[i] = soak.start_beat(i)
    return f"kill -9 beat replica {beat.proc.pid} (restarted on host {i})"
