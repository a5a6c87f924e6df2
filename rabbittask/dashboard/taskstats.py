"""Per-task figures over the history read: count, failure rate and runtime percentiles, and per minute.

Runtimes go into log-spaced buckets (each `GROWTH` times the one before, from `MIN_S`), so a
task's percentiles over 24 hours of events take a few hundred integers, and are within 5% of the
exact value. The whole window feeds the table; the last `MINUTES` minutes feed the charts.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

GROWTH = 1.1  # a bucket's upper bound is 10% above its lower: a percentile is off by at most ~5%
MIN_S = 0.0001
QUANTILES = (0.5, 0.95, 0.99)
RAN = ("succeeded", "failed", "retried")  # runs that took time; a dead letter repeats a failure or never ran


def bucket_of(runtime_s: float) -> int:
    """The bucket of a runtime: 0 up to `MIN_S`, then one per factor of `GROWTH`."""
    return 0 if runtime_s <= MIN_S else int(math.log(runtime_s / MIN_S, GROWTH)) + 1


def bucket_value(bucket: int) -> float:
    """A runtime that stands for its bucket: the geometric middle of its bounds."""
    return MIN_S if bucket == 0 else MIN_S * GROWTH ** (bucket - 0.5)


class Runtimes:
    """A histogram of runtimes in log buckets."""

    __slots__ = ("buckets", "n")

    def __init__(self) -> None:
        self.buckets: Counter[int] = Counter()
        self.n = 0

    def add(self, runtime_s: float) -> None:
        self.buckets[bucket_of(runtime_s)] += 1
        self.n += 1

    def quantile(self, q: float) -> float | None:
        """The runtime `q` (0-1) of the runs are at or below; None without runs."""
        if not self.n:
            return None
        rank = max(1, math.ceil(q * self.n))
        seen = 0
        for bucket in sorted(self.buckets):
            seen += self.buckets[bucket]
            if seen >= rank:
                return round(bucket_value(bucket), 6)
        return None  # not reached: the counts add up to n


class TaskStats:
    """Counts by state and runtimes of each task, over everything fed and per minute."""

    def __init__(self) -> None:
        self.counts: dict[str, Counter[str]] = {}
        self.runtimes: dict[str, Runtimes] = {}
        self.minutes: dict[int, dict[str, Runtimes]] = {}  # minute -> task -> runtimes; pruned with the plot

    def add(self, event: dict[str, Any], minute: int | None) -> None:
        """Count one event; `minute` None when it is older than the charts show."""
        task, state = str(event.get("task", "?")), str(event.get("state", "?"))
        self.counts.setdefault(task, Counter())[state] += 1
        runtime = event.get("runtime_s")
        if state not in RAN or not isinstance(runtime, int | float):
            return
        self.runtimes.setdefault(task, Runtimes()).add(runtime)
        if minute is not None:
            self.minutes.setdefault(minute, {}).setdefault(task, Runtimes()).add(runtime)

    def prune(self, oldest_minute: int) -> None:
        for minute in [m for m in self.minutes if m < oldest_minute]:
            del self.minutes[minute]

    def table(self) -> list[dict[str, Any]]:
        """A row per task: count (finished), succeeded, failed, retried, failure rate, p50/p95/p99 seconds."""
        rows = []
        for task in sorted(self.counts):
            c = self.counts[task]
            finished = c["succeeded"] + c["failed"]
            runtimes = self.runtimes.get(task, Runtimes())
            row: dict[str, Any] = {"task": task, "count": finished, "succeeded": c["succeeded"], "failed": c["failed"]}
            row["retried"], row["dead_lettered"] = c["retried"], c["dead-lettered"]
            row["failure_rate"] = round(c["failed"] / finished, 4) if finished else None
            for q in QUANTILES:
                row[f"p{round(q * 100)}_s"] = runtimes.quantile(q)
            rows.append(row)
        return rows

    def series(self, task: str, minutes: list[int]) -> dict[str, list[float | None]]:
        """Per minute of `minutes`: the task's p50/p95/p99 runtime (None in minutes without runs) and runs."""
        out: dict[str, list[float | None]] = {f"p{round(q * 100)}_s": [] for q in QUANTILES}
        out["runs"] = []
        for minute in minutes:
            runtimes = self.minutes.get(minute, {}).get(task, Runtimes())
            for q in QUANTILES:
                out[f"p{round(q * 100)}_s"].append(runtimes.quantile(q))
            out["runs"].append(runtimes.n)
        return out
