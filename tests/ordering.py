"""The ledger of tests/apps/ordered_app.py and the check of per-key order.

Each run appends `{"event", "key", "seq", "attempt", "redelivered", "pid", "t"}` to its process's file.
Runs of one key never overlap (the next is delivered only after the last one's ack), so their start
times order them, across processes of this machine. Order holds when, per key, the sequence numbers in
start order never go down and each new number is the next one: a number may repeat (a redelivery after
a kill, or a retry), but a later task never runs before an earlier one has.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any


def records(directory: Path, event: str = "run") -> list[dict[str, Any]]:
    """Every finished line of the ledger files in `directory` with this `event`, in start-time order."""
    out: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_text().split("\n")[:-1]:  # a process may be writing its last line right now
            if line.strip():
                record = json.loads(line)
                if record["event"] == event:
                    out.append(record)
    out.sort(key=lambda r: r["t"])
    return out


def done(directory: Path, expected: dict[str, int]) -> bool:
    """True when every key of `expected` (key -> number of tasks) has run its last sequence number."""
    last = {(r["key"], r["seq"]) for r in records(directory)}
    return all((key, n - 1) in last for key, n in expected.items())


def order_violations(runs: list[dict[str, Any]]) -> list[str]:
    """What broke per-key order in `runs` (start-time order); empty when nothing did."""
    top: dict[str, int] = defaultdict(lambda: -1)
    problems: list[str] = []
    for r in runs:
        key, seq = r["key"], r["seq"]
        if seq < top[key]:
            problems.append(f"key {key}: {seq} ran after {top[key]} (pid {r['pid']}, t {r['t']:.6f})")
        elif seq > top[key] + 1:
            problems.append(f"key {key}: {seq} ran before {top[key] + 1} (pid {r['pid']}, t {r['t']:.6f})")
        top[key] = max(top[key], seq)
    return problems


def repeats(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs of a (key, seq) that had run before: redeliveries (or retries)."""
    seen: set[tuple[str, int]] = set()
    out = []
    for r in runs:
        if (r["key"], r["seq"]) in seen:
            out.append(r)
        seen.add((r["key"], r["seq"]))
    return out
