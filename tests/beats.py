"""Start `rabbittask beat` replicas as subprocesses in tests, and build in-process schedulers."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.workers import ROOT, WorkerProcess, worker_env

ACTIVE = re.compile(r"beat (?P<who>\S+) is the active scheduler at=(?P<at>[0-9.]+)")


class BeatProcess(WorkerProcess):
    """A `rabbittask beat` subprocess in its own process group, its log captured to a file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rabbittask", "beat", *args],
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def active_since(self) -> float | None:
        """When this replica last became the active scheduler (epoch seconds), or None."""
        found = ACTIVE.findall(self.log())
        return float(found[-1][1]) if found else None

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


BeatFactory = Callable[..., BeatProcess]


@pytest.fixture
def beat_factory(broker_url: str, tmp_path: Path) -> Iterator[BeatFactory]:
    """Start `rabbittask beat -A <app> <args...>` replicas; every one is stopped after the test."""
    started: list[BeatProcess] = []

    def start(app: str, *args: str, prefix: str = "", env: dict[str, str] | None = None) -> BeatProcess:
        extra = {"RT_TEST_PREFIX": prefix, "RT_TEST_LEDGER": str(tmp_path), **(env or {})}
        b = BeatProcess(["-A", app, *args], worker_env(broker_url, extra), tmp_path / f"beat-{len(started)}.log")
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()
