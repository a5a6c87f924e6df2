"""Task history on the broker: the dashboard and `rabbittask events` read events from before they started."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rabbittask import App
from tests.apps.hist import make_app
from tests.integration.test_dashboard import DashboardProcess
from tests.waiting import wait_until
from tests.workers import ROOT, WorkerFactory, worker_env

APP = "tests.apps.hist:app"
TOKEN = "history-token-0123456789"


@pytest.fixture
def prefix(unique_name: str, amqp_cleanup: Any) -> str:
    for queue in ("jobs", "jobs.dlq", "x.history"):
        amqp_cleanup.queue(f"{unique_name}.{queue}")
    amqp_cleanup.exchange(f"{unique_name}.x.events")
    return unique_name


@pytest.fixture
def app(prefix: str, broker_url: str) -> Iterator[App]:
    app = make_app(prefix, broker_url)
    yield app
    app.close()


def start_dashboard(broker_url: str, prefix: str, log_path: Path) -> DashboardProcess:
    env = worker_env(broker_url, {"RT_TEST_PREFIX": prefix})
    return DashboardProcess(["-A", APP, "--port", "0", "--token", TOKEN], env, log_path)


def get(dashboard: DashboardProcess, path: str, status: int = 200) -> dict[str, Any]:
    request = urllib.request.Request(f"{dashboard.base}{path}", headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            code, body = response.status, json.load(response)
    except urllib.error.HTTPError as e:
        code, body = e.code, json.load(e)
    assert code == status, body
    assert isinstance(body, dict)
    return body


def state(dashboard: DashboardProcess) -> dict[str, Any]:
    return get(dashboard, "/api/state")


def worker_host() -> str:
    return socket.gethostname()


def events_cli(broker_url: str, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = worker_env(broker_url, {"RT_TEST_PREFIX": prefix})
    command = [sys.executable, "-m", "rabbittask", "events", "-A", APP, *args]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(120)
def test_a_restarted_dashboard_shows_the_history_and_charts_from_before_the_restart(
    app: App, prefix: str, broker_url: str, worker_factory: WorkerFactory, tmp_path: Path
) -> None:
    work, fail = app.tasks["hist.work"], app.tasks["hist.fail"]
    worker = worker_factory(APP, prefix=prefix)
    worker.wait_for_log("consuming from")
    first = start_dashboard(broker_url, prefix, tmp_path / "first.log")
    try:
        # Given a run the dashboard watches: five tasks succeed, two fail
        for n in range(5):
            work.delay(n)  # type: ignore[attr-defined]
        failed = {fail.delay(n, secret="hunter2").id for n in (1, 2)}  # type: ignore[attr-defined]
        expected = {"succeeded": 5, "failed": 2, "dead-lettered": 2}
        wait_until(lambda: state(first)["totals"] == expected, 30, lambda: str(state(first)))
    finally:
        assert first.stop() == 0, first.log_path.read_text()
    # When the run goes on while the dashboard is down, and it starts again
    late = [work.delay(n, note=f"order-{n}").id for n in range(5, 8)]  # type: ignore[attr-defined]
    second = start_dashboard(broker_url, prefix, tmp_path / "second.log")
    try:
        # Then it shows everything: the tasks from before its restart, in the totals, the plot and the failures
        wait_until(lambda: state(second)["totals"].get("succeeded") == 8, 30, lambda: str(state(second)))
        seen = state(second)
        assert seen["totals"]["failed"] == 2
        assert sum(seen["rates"]["series"]["succeeded"]) == 8 and sum(seen["rates"]["series"]["failed"]) == 2
        assert {f["id"] for f in seen["failures"]} == failed
        assert seen["started_at"] < seen["now"] - 0.5  # the history reaches back before this dashboard started
        assert seen["history_error"] is None
        # And the per-task table and runtime chart cover the runs from before the restart
        stats = {row["task"]: row for row in seen["task_stats"]}
        assert (stats["hist.work"]["count"], stats["hist.work"]["failure_rate"]) == (8, 0.0)
        assert (stats["hist.fail"]["failed"], stats["hist.fail"]["failure_rate"]) == (2, 1.0)
        assert stats["hist.work"]["p50_s"] is not None and stats["hist.work"]["p99_s"] >= stats["hist.work"]["p50_s"]
        assert sum(get(second, "/api/stats/hist.work")["runs"]) == 8
        # And a task is found by a piece of its arguments, with its life on its page
        found = get(second, "/api/tasks?args=order-6")
        assert [t["id"] for t in found["tasks"]] == [late[1]] and found["indexed"] == 10
        life = get(second, f"/api/task/{late[1]}")
        assert (life["task"], life["state"], life["args"]) == ("hist.work", "succeeded", "(6, note='order-6')")
        assert [e["state"] for e in life["events"]] == ["succeeded"] and life["worker"].startswith(worker_host())
        # Masked arguments never reach the history: the failures show stars, and the secret finds nothing
        failures = get(second, "/api/tasks?state=failed&task=hist.fail&since=1h")
        assert {t["id"] for t in failures["tasks"]} == failed
        assert {t["args"] for t in failures["tasks"]} == {"(1, secret='***')", "(2, secret='***')"}
        assert get(second, "/api/tasks?args=hunter2")["matched"] == 0
        assert "no task 'nope' in the history" in get(second, "/api/task/nope", status=404)["error"]
        assert "is not a time" in get(second, "/api/tasks?since=soon", status=400)["error"]
    finally:
        assert second.stop() == 0, second.log_path.read_text()


@pytest.mark.timeout(90)
def test_events_command_finds_past_events_by_task_state_and_time(
    app: App, prefix: str, broker_url: str, worker_factory: WorkerFactory
) -> None:
    work, fail = app.tasks["hist.work"], app.tasks["hist.fail"]
    worker = worker_factory(APP, prefix=prefix)
    worker.wait_for_log("consuming from")
    ok = [work.delay(n).id for n in range(3)]  # type: ignore[attr-defined]
    bad = fail.delay(7).id  # type: ignore[attr-defined]

    def failed_lines() -> list[dict[str, Any]] | None:
        out = events_cli(broker_url, prefix, "--state", "failed", "--since", "1h", "--json")
        assert out.returncode == 0, out.stderr
        lines = [json.loads(x) for x in out.stdout.splitlines()]
        return lines or None

    (only,) = wait_until(failed_lines, 30)
    assert (only["id"], only["task"], only["exc_type"]) == (bad, "hist.fail", "ValueError")
    assert only["exc_message"] == "bad input 7"
    assert only["worker"].endswith(f":{only['pid']}") and only["traceback"].endswith("ValueError: bad input 7\n")
    # Every succeeded event of one task, as text (a count on stderr)
    out = events_cli(broker_url, prefix, "--task", "hist.work", "--state", "succeeded")
    assert out.returncode == 0 and out.stderr.strip() == "3 event(s)", out.stderr
    assert sorted(line.split()[4] for line in out.stdout.splitlines()) == sorted(ok)
    # One task by id: its life (a failed task is also dead-lettered)
    out = events_cli(broker_url, prefix, "--id", bad, "--json")
    assert sorted(json.loads(x)["state"] for x in out.stdout.splitlines()) == ["dead-lettered", "failed"]
    # Nothing after a time in the future
    out = events_cli(broker_url, prefix, "--since", "2999-01-01T00:00")
    assert out.returncode == 0 and out.stdout == "" and out.stderr.strip() == "0 event(s)"


def test_events_command_says_what_is_wrong_with_a_time_or_a_missing_history(broker_url: str, unique_name: str) -> None:
    out = events_cli(broker_url, unique_name, "--since", "yesterday")
    assert out.returncode == 2 and "'yesterday' is not a time: use a duration ago (90s, 30m, 1h" in out.stderr
    out = events_cli(broker_url, unique_name)
    assert out.returncode == 1
    assert f"there is no history stream {unique_name}.x.history on the broker" in out.stderr
