"""The ledger checker: what publishers saw confirmed against what workers ran.

Workers append a `start` record per run (key, pid, the delivery's redelivered flag and count, time)
and an `end` record when the run gets there; `runs()` pairs them. After a scenario:
lost = confirmed - executed must be empty; a key run more than once is a duplicate, counted, and
explained only by as many runs that saw a redelivery (whichever ran first: a worker resumed after
SIGSTOP runs the copy it held after the broker redelivered it elsewhere) or where the publisher re-sent that key after a
failed confirm (`resent`: a copy marked `rt-resent`, or a key the test published again); an
unexplained duplicate fails every scenario. Recovery time = fault end to the first run that started
after it and finished (its ack follows at once).
"""

from __future__ import annotations

import contextlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.waiting import wait_until


@dataclass
class Run:
    """One run of a task: which message, where, how it was delivered, when it started and ended."""

    key: str
    pid: int
    redelivered: bool
    delivery_count: int
    start: float
    end: float | None = None
    resent: bool = False  # the copy a publisher sent again after its confirm never came (`rt-resent`)


@dataclass
class Ledger:
    """Publisher-side record plus the worker-side files in `directory`."""

    directory: Path
    confirmed: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)  # publishes that raised: may or may not be enqueued
    resent: set[str] = field(default_factory=set)  # keys published again after a failed confirm

    def records(self) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for path in sorted(self.directory.glob("*.jsonl")):
            # A worker may be writing a line right now: only the lines it finished (up to a newline) count.
            for line in path.read_text().split("\n")[:-1]:
                if line.strip():
                    out.append(json.loads(line))
        return out

    def runs(self) -> list[Run]:
        """Every run that started, in start order, with its end where it had one."""
        runs: list[Run] = []
        open_runs: dict[tuple[str, int], Run] = {}
        for r in self.records():  # a file per process, in write order: an end follows its start
            key, pid, t = str(r["key"]), int(r["pid"]), float(r["t"])  # type: ignore[call-overload, arg-type]
            if r["event"] == "start":
                count = int(r.get("count", 1))  # type: ignore[call-overload]
                run = Run(key, pid, bool(r.get("redelivered")), count, t, resent=bool(r.get("resent")))
                open_runs[key, pid] = run
                runs.append(run)
            elif r["event"] == "end" and (run_ := open_runs.pop((key, pid), None)) is not None:
                run_.end = t
        return sorted(runs, key=lambda run: run.start)

    def ends(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for r in self.records():
            if r["event"] == "end":
                counts[str(r["key"])] += 1
        return counts

    def wait_executed(self, keys: set[str], timeout_s: float) -> None:
        """Wait until every key in `keys` ran to its end, or `timeout_s`: then the report says which did not."""
        with contextlib.suppress(AssertionError):
            wait_until(lambda: keys <= set(self.ends()), timeout_s, interval_s=0.2)

    def wait_runs(self, count: int, timeout_s: float) -> list[Run]:
        """Wait until `count` runs have started; return them."""
        return wait_until(
            lambda: runs if len(runs := self.runs()) >= count else None,
            timeout_s,
            lambda: f"the ledger shows {len(self.runs())} runs started, expected {count}",
        )

    def report(self, scenario: str, fault_end: float | None = None) -> Report:
        ends = self.ends()
        executed = set(ends)
        runs = self.runs()
        by_key: dict[str, list[Run]] = defaultdict(list)
        for run in runs:
            by_key[run.key].append(run)
        duplicates = redelivered = resent = 0
        unexplained: list[str] = []
        for key in set(by_key) | executed:
            extra = max(len(by_key[key]), ends.get(key, 0)) - 1
            if extra <= 0:
                continue
            duplicates += extra
            # Each redelivered run is one more delivery of the message, whichever ran first: a worker resumed
            # after SIGSTOP runs the copy it held after the broker redelivered it elsewhere.
            seen = min(extra, sum(run.redelivered for run in by_key[key]))
            redelivered += seen
            if key in self.resent or any(run.resent for run in by_key[key]):  # re-sent by the test or the publisher
                resent += extra - seen
            elif seen < extra:
                unexplained.append(key)
        recovery = None
        if fault_end is not None:
            done = [run.end for run in runs if run.start >= fault_end and run.end is not None]
            recovery = min(done) - fault_end if done else None
        return Report(
            scenario=scenario,
            confirmed=len(self.confirmed),
            executed=len(executed & self.confirmed),
            lost=sorted(self.confirmed - executed),
            duplicates=duplicates,
            redelivered=redelivered,
            resent=resent,
            unexplained=sorted(unexplained),
            unconfirmed_executed=len(executed & self.failed),
            recovery_s=recovery,
        )


@dataclass
class Report:
    scenario: str
    confirmed: int
    executed: int
    lost: list[str]
    duplicates: int
    redelivered: int  # duplicates whose later run saw the redelivered flag
    resent: int  # duplicates of keys the publisher re-sent after a failed confirm
    unexplained: list[str]  # keys run again with neither: the checker's failure
    unconfirmed_executed: int
    recovery_s: float | None

    def line(self) -> str:
        rec = "-" if self.recovery_s is None else f"{self.recovery_s:.2f}s"
        return (
            f"[ledger] {self.scenario}: confirmed={self.confirmed} executed={self.executed} lost={len(self.lost)} "
            f"duplicates={self.duplicates} (redelivered={self.redelivered} resent={self.resent} "
            f"unexplained={len(self.unexplained)}) unconfirmed-but-ran={self.unconfirmed_executed} recovery={rec}"
        )


CURRENT_TEST: list[pytest.Item] = []  # set by an autouse fixture in tests/faults/conftest.py


def report_line(line: str) -> None:
    """Print a `[ledger]` line and attach it to the running test, for the terminal summary (also under xdist)."""
    print(line)
    if CURRENT_TEST:
        CURRENT_TEST[-1].user_properties.append(("ledger", line))
