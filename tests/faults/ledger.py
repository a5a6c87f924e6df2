"""The ledger checker: what publishers saw confirmed against what workers ran.

lost = confirmed - executed must be empty; a key run more than once is a duplicate (counted,
and allowed only where the scenario says so); recovery time = fault end to the first task that
started after it.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Ledger:
    """Publisher-side record plus the worker-side files in `directory`."""

    directory: Path
    confirmed: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)  # publishes that raised: may or may not be enqueued

    def records(self) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for path in sorted(self.directory.glob("*.jsonl")):
            for line in path.read_text().splitlines():
                if line.strip():
                    out.append(json.loads(line))
        return out

    def ends(self) -> Counter[str]:
        return Counter(str(r["key"]) for r in self.records() if r["event"] == "end")

    def wait_executed(self, keys: set[str], timeout_s: float) -> None:
        """Wait until every key in `keys` ran to its end."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if keys <= set(self.ends()):
                return
            time.sleep(0.2)

    def first_start_after(self, t: float) -> float | None:
        times = [float(r["t"]) for r in self.records() if r["event"] == "start" and float(r["t"]) >= t]  # type: ignore[arg-type]
        return min(times) if times else None

    def report(self, scenario: str, fault_end: float | None = None) -> Report:
        ends = self.ends()
        executed = set(ends)
        recovery = None
        if fault_end is not None:
            first = self.first_start_after(fault_end)
            recovery = None if first is None else first - fault_end
        return Report(
            scenario=scenario,
            confirmed=len(self.confirmed),
            executed=len(executed & self.confirmed),
            lost=sorted(self.confirmed - executed),
            duplicates=sum(n - 1 for n in ends.values() if n > 1),
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
    unconfirmed_executed: int
    recovery_s: float | None

    def line(self) -> str:
        rec = "-" if self.recovery_s is None else f"{self.recovery_s:.2f}s"
        return (
            f"[ledger] {self.scenario}: confirmed={self.confirmed} executed={self.executed} lost={len(self.lost)} "
            f"duplicates={self.duplicates} unconfirmed-but-ran={self.unconfirmed_executed} recovery={rec}"
        )
