"""The retries app's ledger, read in tests: each run of a task, its attempt and start time (tests/apps/retries_app.py
writes it)."""

from __future__ import annotations

from pathlib import Path

from tests.waiting import wait_until

APP = "tests.apps.retries_app:app"


def runs(tmp_path: Path, prefix: str, name: str) -> list[tuple[str, int, float]]:
    """(tag, attempt, start time) of each run of task `name`, from the ledger."""
    path = tmp_path / prefix
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        task, tag, attempt, t = line.split()
        if task == name:
            out.append((tag, int(attempt.removeprefix("attempt=")), float(t.removeprefix("t="))))
    return out


def wait_runs(
    tmp_path: Path, prefix: str, name: str, count: int, timeout_s: float = 20.0
) -> list[tuple[str, int, float]]:
    return wait_until(
        lambda: found if len(found := runs(tmp_path, prefix, name)) >= count else None,
        timeout_s,
        lambda: f"{name} ran {len(runs(tmp_path, prefix, name))} time(s), expected {count}",
        interval_s=0.02,
    )
