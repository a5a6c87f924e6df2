"""Beat tests' set-up: queue prefixes of tests.apps.beat_app, and `rabbittask beat` replicas as subprocesses."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rabbittask.beat.state import state_queue_name
from tests.workers import ROOT, WorkerProcess, worker_env

ACTIVE = re.compile(r"beat (?P<who>\S+) is the active scheduler at=(?P<at>[0-9.]+)")


@pytest.fixture
def prefix(unique_name: str, amqp_cleanup: Any) -> str:
    """The queue prefix of tests.apps.beat_app for this test; its queues and scheduler state are deleted after it."""
    for q in ("ticks", "reports"):
        amqp_cleanup.queue(f"{unique_name}.{q}")
        amqp_cleanup.queue(f"{unique_name}.{q}.dlq")
    amqp_cleanup.queue(state_queue_name("rabbittask", f"beat-{unique_name}"))
    return unique_name


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
