"""The dashboard's control-plane views in a real headless Chromium: active tasks with revoke and terminate
(behind the CSRF check), rate limits with their measured rate, delayed retries with due times, periodic schedules."""

from __future__ import annotations

import asyncio
import datetime
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rabbittask import App, chain
from rabbittask.beat import Beat
from rabbittask.beat.state import state_queue_name
from rabbittask.message import H_REASON
from tests import amqp
from tests.apps.dash_views import make_app
from tests.integration.test_dashboard import CHROMIUM, CHROMIUM_ARGS, TOKEN, WAIT_MS, DashboardProcess
from tests.waiting import assert_stays
from tests.workers import WorkerFactory, worker_env

APP = "tests.apps.dash_views:app"


@pytest.fixture
def prefix(
    unique_name: str, amqp_cleanup: Any, broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    for queue in ("views", "views.dlq", "join"):
        amqp_cleanup.queue(f"{unique_name}.{queue}")
    amqp_cleanup.queue(state_queue_name(f"{unique_name}.x", f"dash-views-{unique_name}"))
    monkeypatch.setenv("RT_TEST_LEDGER", str(tmp_path))
    yield unique_name
    amqp.delete_ladder(broker_url, f"{unique_name}.x")  # its own exchange, history stream, control objects


@pytest.fixture
def app(prefix: str, broker_url: str) -> Iterator[App]:
    app = make_app(prefix, broker_url)
    yield app
    app.close()


@pytest.fixture
def playwright() -> Iterator[Any]:
    import os

    if not os.path.exists(CHROMIUM):
        pytest.skip(f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium; make venv installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


def in_thread(work: Any) -> None:
    """Run `work` in a thread (Playwright's sync API runs an event loop in this one); re-raise what it raised."""
    error: list[BaseException] = []

    def target() -> None:
        try:
            work()
        except BaseException as e:  # noqa: BLE001 - handed to the test's thread
            error.append(e)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if error:
        raise error[0]


async def run_beat_for(app: App, seconds: float) -> int:
    beat = Beat(app, poll_s=0.2)
    task = asyncio.ensure_future(beat.run())
    await asyncio.sleep(seconds)
    beat.stop()
    await task
    return beat.ticks_sent


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_dashboard_revokes_and_terminates_an_active_task_shows_rate_limits_delayed_retries_and_schedules(
    app: App,
    prefix: str,
    broker_url: str,
    worker_factory: WorkerFactory,
    playwright: Any,
    tmp_path: Path,
) -> None:
    from playwright.sync_api import expect

    worker = worker_factory(APP, "--threads", "2", prefix=prefix)
    worker.wait_for_log("consuming from")
    env = worker_env(broker_url, {"RT_TEST_PREFIX": prefix, "RT_TEST_LEDGER": str(tmp_path)})
    board = DashboardProcess(["-A", APP, "--port", "0", "--token", TOKEN], env, tmp_path / "dashboard.log")
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    crunch, later, throttled = (app.tasks[f"{prefix}.{n}"] for n in ("crunch", "later", "throttled"))
    sent: dict[str, Any] = {}
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.goto(board.url)

        # Given a long task running, a retry waiting 15 s, ten rate-limited runs, and beat ticking for 2.5 s
        def send() -> None:
            sent["long"] = crunch.delay(120).id  # type: ignore[attr-defined]
            sent["short"] = crunch.delay(20).id  # type: ignore[attr-defined]
            sent["later"] = later.delay(7).id  # type: ignore[attr-defined]
            for n in range(10):
                throttled.delay(n)  # type: ignore[attr-defined]
            sent["chain"] = chain(throttled.s(1), throttled.s(), throttled.s()).delay()
            sent["ticks"] = asyncio.run(run_beat_for(app, 2.5))
            app.close()

        in_thread(send)
        # Then the long task shows in the active tasks, with its worker child
        row = page.locator(f'#active tr[data-id="{sent["long"]}"]')
        expect(row).to_contain_text(f"{prefix}.crunch", timeout=WAIT_MS)
        expect(row).to_contain_text("120")
        # And the retry waits in the delayed tasks, with its due time, then leaves once it ran
        waiting = page.locator(f'#delayed-tasks tr[data-id="{sent["later"]}"]')
        expect(waiting).to_contain_text(f"{prefix}.later", timeout=WAIT_MS)
        expect(page.locator("#ladder-total")).not_to_have_text("-")
        # And each rate limit: declared, applied by the live children, measured from the events
        limit = page.locator(f'#rate-limits tr[data-task="{prefix}.throttled"]')
        expect(limit.locator("td").nth(1)).to_have_text("5/s", timeout=WAIT_MS)
        expect(limit.locator("td").nth(2)).to_have_text("5/s")
        expect(limit.locator("td").nth(3)).not_to_have_text("0.00/s", timeout=WAIT_MS)
        in_thread(lambda: app.control.rate_limit(f"{prefix}.throttled", "50/s"))
        expect(limit.locator("td").nth(2)).to_have_text("50/s (override)", timeout=WAIT_MS)
        # And the schedule, with its last tick (from the history) and next tick
        assert sent["ticks"] >= 1  # (a loaded machine may take a while to elect the scheduler)
        schedule = page.locator(f'#schedules tr[data-schedule="{prefix}-tick"]')
        expect(schedule).to_contain_text("every 1 s", timeout=WAIT_MS)
        expect(schedule.locator(".last-tick")).not_to_have_text("none seen", timeout=WAIT_MS)
        top, bottom = (page.locator(f"#{x}-section").bounding_box() for x in ("active", "schedules"))
        assert top is not None and bottom is not None
        height = bottom["y"] + bottom["height"] - top["y"] + 16
        clip = {"x": 0, "y": top["y"] - 8, "width": 1280, "height": height}
        page.screenshot(path=str(tmp_path / "dashboard-views.png"), full_page=True, clip=clip)  # in the docs
        # When "Revoke" (without terminate) is clicked on a run, the run under way goes on and ends as it would
        short = page.locator(f'#active tr[data-id="{sent["short"]}"]')
        short.locator("button.revoke").click()
        expect(page.locator("#notice")).to_have_text(f"revoked {sent['short']}: it will not run again")
        expect(short).to_have_count(1)

        # When a POST to revoke comes without the CSRF token (or with a wrong one), it is refused: nothing revoked
        for headers in ({}, {"X-CSRF-Token": "forged"}):
            response = page.request.post(
                f"{board.base}/api/revoke", data={"ids": [sent["long"]], "terminate": True}, headers=headers
            )
            assert response.status == 403 and "CSRF token" in response.json()["error"]
        csrf = page.locator('meta[name="csrf-token"]').get_attribute("content")
        response = page.request.post(f"{board.base}/api/revoke", data={"ids": []}, headers={"X-CSRF-Token": csrf})
        assert response.status == 400 and "say which tasks to revoke" in response.json()["error"]
        assert_stays(lambda: row.count() == 1 and amqp.depth(broker_url, f"{prefix}.views.dlq") == 0, 2.5)
        # When "Revoke and terminate" is clicked, the run stops: dead-lettered `terminated`, gone from the page
        row.locator("button.terminate").click()
        expect(page.locator("#notice")).to_have_text(f"revoked and terminating {sent['long']}")
        amqp.wait_depth(broker_url, f"{prefix}.views.dlq", 1, timeout_s=20)
        expect(row).to_have_count(0, timeout=WAIT_MS)
        expect(page.locator(f'#failures li[data-id="{sent["long"]}"]')).to_contain_text("terminated", timeout=WAIT_MS)
        # And a chain's step names its workflow on the task page, with the workflow's tasks seen so far
        flow = sent["chain"]
        page.locator('#search input[name="id"]').fill(flow.steps[-1].id)
        page.locator('#search button[type="submit"]').click()
        page.locator(f'#task-results tr[data-id="{flow.steps[-1].id}"] a.task-link').click()
        expect(page.locator("#task-workflow .workflow-id")).to_have_text(flow.id)
        expect(page.locator("#task-workflow")).to_contain_text("3 task(s) of it in the history (3 succeeded)")
        # And the retry ran again once due: it no longer waits; the run revoked without terminate ended
        expect(waiting).to_have_count(0, timeout=WAIT_MS + 10_000)
        expect(short).to_have_count(0, timeout=WAIT_MS)
    finally:
        browser.close()
        stopped = board.stop()
    assert stopped == 0, board.log_path.read_text()
    dlq = amqp.get_all(broker_url, f"{prefix}.views.dlq")
    letters = {p.message_id: (p.headers or {}).get(H_REASON) for p, _ in dlq}
    assert letters == {sent["long"]: "terminated"}  # and nothing else: the revoked run was not stopped
    assert worker.stop() == 0


@pytest.mark.timeout(60)
def test_beat_announces_each_tick_and_the_history_keeps_it_for_the_schedules_view(app: App, prefix: str) -> None:
    from rabbittask.amqp.connect import connect
    from rabbittask.beat import tick_id
    from rabbittask.dashboard.history import History
    from rabbittask.history import stream

    async def main() -> int:
        connection = await connect(app.settings, "test")
        try:
            assert await stream.declare(connection.channel, app.settings) is None
        finally:
            await connection.close()
        return await run_beat_for(app, 2.5)

    since = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=2)
    # Given beat ticking for 2.5 s while no worker takes the ticks
    sent = asyncio.run(main())
    app.close()
    # Then each tick sent is a `beat.tick.<schedule>` event in the history stream
    events = [
        m
        for m in stream.read(app.settings, since, routing_prefix="beat.tick.")
        if m.get("schedule") == f"{prefix}-tick"
    ]
    assert sent >= 1 and len(events) == sent
    assert {m["routing_key"] for m in events} == {f"beat.tick.{prefix}-tick"}
    # And the dashboard's schedules view takes its last tick from them
    board = History(app.tasks)
    for m in events:
        board.feed(m["routing_key"], m)
    (row,) = board.waiting.schedule_rows(app.schedules, time.time())
    last = max(m["slot"] for m in events)
    assert (row["last_tick"], row["last_tick_id"]) == (last, tick_id(f"{prefix}-tick", last))
    assert row["next_tick"] > last
