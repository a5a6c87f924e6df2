"""`rabbittask beat --list` and schedules in `topology export`, without a broker."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from rabbittask.cli import main
from rabbittask.cli.beat import format_listing
from tests.apps.beat_app import make_app


@pytest.fixture
def new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run with America/New_York as the local time zone."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_list_shows_each_entry_with_its_next_tick_in_local_and_entry_time(new_york: None) -> None:
    app = make_app("cli")
    now = datetime(2025, 3, 29, 12, 0, tzinfo=ZoneInfo("UTC")).timestamp()
    lines = format_listing(app, now).splitlines()
    assert lines[0].split() == ["NAME", "TASK", "QUEUE", "SCHEDULE", "NEXT", "(LOCAL)", "NEXT", "(ENTRY", "TZ)"] + [
        "EXPIRES",
        "CATCH-UP",
    ]
    nightly = next(line for line in lines if line.startswith("nightly-report"))
    # 02:30 Berlin does not exist on 2025-03-30: the tick fires at 03:00 CEST, 21:00 EDT the evening before
    assert "cron '30 2 * * *' (Europe/Berlin)" in nightly
    assert "2025-03-29 21:00:00 EDT" in nightly and "2025-03-30 03:00:00 CEST" in nightly
    every = next(line for line in lines if line.startswith("every-second"))
    assert "every 1s" in every and "2025-03-29 08:00:01 EDT" in every and "skip" in every


def test_beat_list_command_prints_the_table_and_needs_no_broker() -> None:
    result = CliRunner().invoke(main, ["beat", "-A", "tests.apps.beat_app:app", "--list"])
    assert result.exit_code == 0, result.output
    assert "nightly-report" in result.output and "every-second" in result.output


def test_topology_export_has_the_state_queue_and_the_schedules() -> None:
    result = CliRunner().invoke(main, ["topology", "export", "-A", "tests.apps.beat_app:app"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    [state] = [q for q in data["queues"] if q["name"].endswith(".state")]
    assert state["name"].startswith("rabbittask.beat.beat-")
    assert state["arguments"] == {"x-max-length": 1, "x-overflow": "drop-head", "x-queue-type": "quorum"}
    schedules = {s["name"]: s for s in data["rabbittask_schedules"]}
    assert schedules["nightly-report"] == {
        "name": "nightly-report",
        "task": "beat.report",
        "queue": schedules["nightly-report"]["queue"],
        "args": [],
        "kwargs": {"day": "yesterday"},
        "cron": "30 2 * * *",
        "tz": "Europe/Berlin",
        "catch_up": "skip",
        "grace_s": 30.0,
    }
    assert schedules["every-second"]["every_s"] == 1
