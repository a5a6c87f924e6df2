"""Progress of a running task: `ctx.progress()` seen by `.call(on_progress=)`, `handle.progress()` and the dashboard."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rabbittask import App, Progress
from tests import amqp
from tests.apps.hist import gate_path, make_app
from tests.integration.test_dashboard import CHROMIUM_ARGS, WAIT_MS, DashboardProcess
from tests.integration.test_history import APP, TOKEN, start_dashboard
from tests.waiting import wait_until
from tests.workers import WorkerFactory

pytest_plugins = ["tests.integration.test_dashboard"]  # its `playwright` fixture
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard-progress.png"


@pytest.fixture
def prefix(unique_name: str, amqp_cleanup: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    for queue in ("jobs", "jobs.dlq", "x.history"):
        amqp_cleanup.queue(f"{unique_name}.{queue}")
    amqp_cleanup.exchange(f"{unique_name}.x.events")
    monkeypatch.setenv("RT_TEST_LEDGER", str(tmp_path))  # where gate_path() looks, as in the worker
    return unique_name


@pytest.fixture
def app(prefix: str, broker_url: str) -> Iterator[App]:
    app = make_app(prefix, broker_url)
    yield app
    app.close()


@pytest.mark.timeout(90)
def test_a_call_with_on_progress_hears_the_reports_before_the_result(
    app: App, prefix: str, worker_factory: WorkerFactory
) -> None:
    steps = app.tasks["hist.steps"]
    worker_factory(APP, prefix=prefix).wait_for_log("consuming from")
    heard: list[Progress] = []
    # When a caller waits for a task that reports six steps over ~2.4 s
    assert steps.call(6, timeout=30, on_progress=heard.append) == 6  # type: ignore[attr-defined]
    # Then its callback heard some of them (the latest of each second), in order, before the result
    assert heard, "no progress heard"
    assert all(p.total == 6 and 1 <= p.done <= 6 and p.note == f"step {p.done}" for p in heard)
    assert [p.done for p in heard] == sorted(p.done for p in heard) and heard[0].done < 6
    # And async callers too
    async_heard: list[Progress] = []

    async def acall() -> int:
        result: int = await steps.acall(6, timeout=30, on_progress=async_heard.append)  # type: ignore[attr-defined]
        return result

    assert asyncio.run(acall()) == 6 and async_heard and async_heard[0].done < 6
    # A caller without a callback gets no progress messages in its way
    assert steps.call(2, pause_s=0.6, timeout=30) == 2  # type: ignore[attr-defined]


def test_a_progress_report_with_impossible_numbers_says_what_is_wrong() -> None:
    from rabbittask import TaskContext

    ctx = TaskContext("id-1", "shop.resize", "q")
    with pytest.raises(ValueError, match=r"task 'shop.resize': progress\(5, 0\) makes no sense: total must be above 0"):
        ctx.progress(5, 0)
    with pytest.raises(TypeError, match=r"progress\(done, total\) takes whole numbers, got 0.5 and 1"):
        ctx.progress(0.5, 1)  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_progress_of_a_long_task_shows_in_the_dashboard_and_its_handle(
    app: App,
    prefix: str,
    broker_url: str,
    worker_factory: WorkerFactory,
    playwright: Any,
    tmp_path: Path,
) -> None:
    from playwright.sync_api import expect

    worker_factory(APP, prefix=prefix).wait_for_log("consuming from")
    dashboard: DashboardProcess = start_dashboard(broker_url, prefix, tmp_path / "dashboard.log")
    browser = playwright.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"),
        executable_path="/usr/bin/chromium",
        args=CHROMIUM_ARGS,
        headless=True,
        viewport={"width": 1280, "height": 900},
    )
    try:
        app.tasks["hist.work"].delay(1, note="warm-up")  # type: ignore[attr-defined]
        # Given a long task that reports 3 of 10 and then waits
        handle = app.tasks["hist.long"].delay()  # type: ignore[attr-defined]
        page = browser.new_page()
        page.goto(dashboard.url)
        # Then the page shows its progress, live
        row = page.locator(f'#in-progress tr[data-id="{handle.id}"]')
        expect(row).to_contain_text("3/10 (30%)", timeout=WAIT_MS)
        expect(row).to_contain_text("resizing images")
        page.locator("#progress-section").screenshot(path=str(tmp_path / "dashboard-progress.png"))
        if os.environ.get("RT_SAVE_SCREENSHOTS"):  # the picture in docs/dashboard.md
            shutil.copyfile(tmp_path / "dashboard-progress.png", SCREENSHOT)
        # And its handle reads the same from the history
        report = wait_until(lambda: handle.progress(), 15)
        assert (report.done, report.total, report.note, report.fraction) == (3, 10, "resizing images", 0.3)
        # When it goes on and finishes, it leaves the list; its page shows it succeeded with its last progress
        gate_path(prefix).touch()
        expect(row).to_have_count(0, timeout=WAIT_MS)
        page.locator("#search input[name=id]").fill(handle.id)
        page.locator("#search button[type=submit]").click()
        page.locator(f'#task-results tr[data-id="{handle.id}"] a.task-link').click()
        expect(page.locator("#task-summary")).to_contain_text("succeeded", timeout=WAIT_MS)
        expect(page.locator("#task-summary")).to_contain_text("progress 10/10 done")
        assert wait_until(lambda: (p := handle.progress()) and p.done == 10 and p, 15).note == "done"

        # DLQ bulk action: replay every ValueError of hist.fail, behind the CSRF check
        for n in (1, 2):
            app.tasks["hist.fail"].delay(n)  # type: ignore[attr-defined]
        dlq = f"{prefix}.jobs.dlq"
        wait_until(lambda: amqp.depth(broker_url, dlq) == 2, 20)
        replay = f"{dashboard.base}/api/dlq/{prefix}.jobs/replay"
        csrf = page.locator('meta[name="csrf-token"]').get_attribute("content")
        headers = {"X-CSRF-Token": csrf or ""}
        assert page.request.post(replay, data={"filter": {"task": "hist.fail"}}).status == 403  # no CSRF token
        none = page.request.post(replay, data={"filter": {"exc_type": "KeyError"}}, headers=headers).json()
        assert none == {"matched": 0, "replayed": [], "missing": []}
        bad = page.request.post(replay, data={"filter": {"color": "red"}}, headers=headers)
        assert bad.status == 400 and "unknown filter field(s) color: use task, exc_type, reason" in bad.json()["error"]
        wanted = {"task": "hist.fail", "exc_type": "ValueError"}
        done = page.request.post(replay, data={"filter": wanted}, headers=headers).json()
        assert done["matched"] == 2 and len(done["replayed"]) == 2  # (they fail again: hist.fail always does)
    finally:
        browser.close()
        assert dashboard.stop() == 0, dashboard.log_path.read_text()
    assert TOKEN  # the dashboard of test_history's helpers, with its token
