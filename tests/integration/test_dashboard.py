"""`rabbittask dashboard` in a real headless Chromium (Playwright driving Debian's chromium), and its CLI errors."""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from rabbittask import App
from tests import amqp
from tests.apps.dash import flag_path, make_app
from tests.waiting import wait_until
from tests.workers import ROOT, WorkerFactory, worker_env

APP = "tests.apps.dash:app"
TOKEN = "test-token-0123456789abcdef"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 15_000


class DashboardProcess:
    """`rabbittask dashboard` as a subprocess; `url` is the login URL it printed."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rabbittask", "dashboard", *args],
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.url = self._wait_for_url()
        self.base = self.url.split("/?", 1)[0]

    def _wait_for_url(self, timeout_s: float = 20.0) -> str:
        def printed() -> str | None:
            found = re.search(r"on (http://\S+\?token=\S+)", self.log_path.read_text())
            if found:
                return found.group(1)
            if self.proc.poll() is not None:
                raise AssertionError(no_url())
            return None

        def no_url() -> str:
            return f"dashboard printed no URL; exit={self.proc.poll()}\n{self.log_path.read_text()}"

        return wait_until(printed, timeout_s, no_url)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def prefix(
    unique_name: str, amqp_cleanup: Any, broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    amqp_cleanup.queue(f"{unique_name}.orders")
    amqp_cleanup.queue(f"{unique_name}.orders.dlq")
    amqp_cleanup.queue(f"{unique_name}.join")
    monkeypatch.setenv("RT_TEST_LEDGER", str(tmp_path))  # where flag_path() looks, as in the worker
    yield unique_name
    amqp.delete_ladder(broker_url, f"{unique_name}.x")  # its own exchange: a history stream of its own (make_app)


@pytest.fixture
def app(prefix: str, broker_url: str) -> Iterator[App]:
    app = make_app(prefix, broker_url)
    yield app
    app.close()


@pytest.fixture
def dashboard(broker_url: str, prefix: str, tmp_path: Path) -> Iterator[DashboardProcess]:
    env = worker_env(broker_url, {"RT_TEST_PREFIX": prefix, "RT_TEST_LEDGER": str(tmp_path)})
    process = DashboardProcess(["-A", APP, "--port", "0", "--token", TOKEN], env, tmp_path / "dashboard.log")
    yield process
    assert process.stop() == 0, process.log_path.read_text()


@pytest.fixture
def playwright() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium; make venv installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_dashboard_shows_a_worker_a_failure_and_replays_it_from_the_dlq(
    app: App,
    prefix: str,
    broker_url: str,
    worker_factory: WorkerFactory,
    dashboard: DashboardProcess,
    playwright: Any,
    tmp_path: Path,
) -> None:
    from playwright.sync_api import expect

    queue, dlq = f"{prefix}.orders", f"{prefix}.orders.dlq"
    worker = worker_factory(APP, prefix=prefix)
    worker.wait_for_log("consuming from")
    browser = playwright.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"),
        executable_path=CHROMIUM,
        args=CHROMIUM_ARGS,
        headless=True,
        viewport={"width": 1280, "height": 900},
    )
    anonymous = playwright.request.new_context()
    try:
        page = browser.new_page()
        shot = _screenshots(page, tmp_path)
        # Given a browser that logs in with the URL the command printed (the token leaves the address bar)
        assert dashboard.base.startswith("http://127.0.0.1:")  # local by default
        page.goto(dashboard.url)
        assert page.url == f"{dashboard.base}/"
        # Then it sees the live worker and its queue
        expect(page.locator(f'#workers tr[data-pid="{worker.pid}"]')).to_contain_text(queue, timeout=WAIT_MS)
        queue_row = page.locator(f'#queues tr[data-queue="{queue}"]')
        expect(queue_row).to_be_visible()
        expect(queue_row.locator("td").nth(3)).to_have_text("1")  # one consumer
        # When ten orders ship and three charges fail (no retries: they are dead-lettered)
        for order in range(10):
            app.tasks["dash.ship"].delay(order)  # type: ignore[attr-defined]
        failed = [app.tasks["dash.charge"].delay(order).id for order in (41, 42, 43)]  # type: ignore[attr-defined]
        # Then the failures appear with their traceback, and the queue's DLQ holds them
        for task_id in failed:
            expect(page.locator(f'#failures li[data-id="{task_id}"]')).to_contain_text("card declined", timeout=WAIT_MS)
        first_failure = page.locator(f'#failures li[data-id="{failed[0]}"]')
        first_failure.locator("summary").click()
        expect(first_failure.locator("pre")).to_contain_text("RuntimeError: card declined for order 41")
        expect(queue_row.locator(".dlq-depth")).to_have_text("3", timeout=WAIT_MS)
        expect(page.locator("#total-succeeded")).to_have_text("succeeded 10", timeout=WAIT_MS)
        shot("failed")

        # A request without the token is refused, as is a wrong token
        response = anonymous.get(f"{dashboard.base}/api/state")
        assert response.status == 401 and "needs its token" in response.text()
        assert response.headers["www-authenticate"] == 'Basic realm="rabbittask dashboard"'
        assert anonymous.get(f"{dashboard.base}/?token=wrong-{TOKEN}").status == 401
        # A POST of the logged-in browser without its CSRF token (or with a wrong one) is refused, and purges nothing
        purge = f"{dashboard.base}/api/dlq/{queue}/purge"
        for headers in ({}, {"X-CSRF-Token": "forged"}):
            response = page.request.post(purge, data={"confirm": dlq}, headers=headers)
            assert response.status == 403 and "CSRF token" in response.json()["error"]
        csrf = page.locator('meta[name="csrf-token"]').get_attribute("content")
        response = page.request.post(
            purge, data={"confirm": dlq}, headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"}
        )
        assert response.status == 403 and "cross-origin request from http://evil.example" in response.json()["error"]
        # The token also works as basic auth (any user name) or bearer; a POST that way still needs a CSRF token
        state = f"{dashboard.base}/api/state"
        assert anonymous.get(state, headers={"Authorization": _basic(f"ops:wrong-{TOKEN}")}).status == 401
        assert anonymous.get(state, headers={"Authorization": _basic(f"ops:{TOKEN}")}).status == 200
        assert anonymous.get(state, headers={"Authorization": f"Bearer {TOKEN}"}).status == 200
        assert anonymous.post(purge, data={"confirm": dlq}, headers={"Authorization": f"Bearer {TOKEN}"}).status == 403
        assert amqp.depth(broker_url, dlq) == 3

        # When the DLQ is browsed, the dead letters are listed with their reason
        queue_row.locator("button.browse").click()
        letter = page.locator(f'#dlq-messages tr[data-id="{failed[0]}"]')
        expect(letter).to_contain_text("task raised: RuntimeError: card declined for order 41")
        expect(page.locator("#dlq-name")).to_contain_text(f"{dlq}: 3 message(s)")
        # And, the card fixed, the first is replayed: it leaves the DLQ and succeeds
        flag_path(prefix).touch()
        letter.locator("button.replay").click()
        expect(page.locator("#notice")).to_have_text(f"replayed 1 message(s) to {queue}")
        expect(letter).to_have_count(0)
        expect(page.locator("#total-succeeded")).to_have_text("succeeded 11", timeout=WAIT_MS)
        expect(queue_row.locator(".dlq-depth")).to_have_text("2", timeout=WAIT_MS)
        expect(first_failure.locator("pre")).to_be_visible()  # an opened traceback stays open across refreshes
        shot("replayed")
        # And "Replay all" sends the other two back: they succeed too
        page.locator("#dlq-replay-all").click()
        expect(page.locator("#notice")).to_have_text(f"replayed 2 message(s) to {queue}")
        expect(page.locator("#total-succeeded")).to_have_text("succeeded 13", timeout=WAIT_MS)
        expect(page.locator("#dlq-name")).to_contain_text(f"{dlq}: 0 message(s)")

        # When a new dead letter is purged, the page asks first (with the DLQ's count as it is now)
        flag_path(prefix).unlink()
        app.tasks["dash.charge"].delay(44)  # type: ignore[attr-defined]
        expect(queue_row.locator(".dlq-depth")).to_have_text("1", timeout=WAIT_MS)
        page.locator("#dlq-purge").click()
        expect(page.locator("#dlq-confirm-text")).to_have_text(
            f"Delete all 1 message(s) of {dlq}? This cannot be undone."
        )
        assert amqp.depth(broker_url, dlq) == 1
        page.locator("#dlq-purge-yes").click()
        expect(page.locator("#notice")).to_have_text(f"purged 1 message(s) from {dlq}")
        expect(queue_row.locator(".dlq-depth")).to_have_text("0", timeout=WAIT_MS)
        assert amqp.depth(broker_url, dlq) == 0
        shot("purged")
    finally:
        anonymous.dispose()
        browser.close()
    assert worker.stop() == 0


def _basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


def _screenshots(page: Any, tmp_path: Path) -> Callable[[str], None]:
    def shot(name: str) -> None:
        page.screenshot(path=str(tmp_path / f"dashboard-{name}.png"), full_page=True)

    return shot


def run_dashboard(broker_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`rabbittask dashboard` run to its end (an error), with the test app's environment."""
    return subprocess.run(
        [sys.executable, "-m", "rabbittask", "dashboard", *args],
        env=worker_env(broker_url, {"RT_TEST_PREFIX": "dash-cli", **env}),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_dashboard_shows_a_running_chord_with_members_done_of_total(
    app: App, prefix: str, worker_factory: WorkerFactory, dashboard: DashboardProcess, playwright: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    from rabbittask import chord

    worker_factory(APP, "--threads", "2", prefix=prefix).wait_for_log("consuming from")
    browser = playwright.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
    )
    try:
        page = browser.new_page()
        page.goto(dashboard.url)
        expect(page.locator("#chords-section")).to_be_hidden()  # no chord yet: no panel
        # When a chord of 30 slow members runs
        pack, invoice = app.tasks["dash.pack"], app.tasks["dash.invoice"]
        c = chord([pack.s(i, 0.4) for i in range(30)], invoice.s())

        def send() -> None:  # in a thread: Playwright's sync API runs an event loop in this one
            try:
                c.delay()
            finally:
                app.close()  # the sending thread's connection

        sender = threading.Thread(target=send)
        sender.start()
        sender.join()
        # Then the page shows it, with its size, while its members settle; and it goes once the callback ran
        row = page.locator(f'#chords tr[data-chord="{c.id}"]')
        expect(row.locator("td").nth(2)).to_have_text("30", timeout=WAIT_MS)
        expect(page.locator("#chords-section")).to_be_visible()
        expect(row).to_have_count(0, timeout=WAIT_MS)
    finally:
        browser.close()


def test_dashboard_says_when_the_broker_is_unreachable(broker_url: str) -> None:
    port = free_port()  # nothing listens there
    run = run_dashboard(f"amqp://guest:guest@127.0.0.1:{port}/", "-A", APP, "--port", "0")
    assert run.returncode == 1
    assert run.stderr.startswith(f"Error: cannot start the dashboard: cannot connect to the broker at 127.0.0.1:{port}")
    assert "is RabbitMQ running and reachable?" in run.stderr


def test_dashboard_says_when_the_app_cannot_be_loaded(broker_url: str) -> None:
    run = run_dashboard(broker_url, "-A", "tests.apps.nope:app")
    assert run.returncode == 1
    assert "Error: cannot import app module 'tests.apps.nope' (-A tests.apps.nope:app): no module named" in run.stderr
    run = run_dashboard(broker_url, "-A", "tests.apps.dash:nothing")
    assert run.returncode == 1
    assert "Error: 'tests.apps.dash' has no attribute 'nothing' (-A tests.apps.dash:nothing)" in run.stderr
    assert "NoneType" not in run.stderr


def test_dashboard_says_when_the_port_is_in_use(broker_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = run_dashboard(broker_url, "-A", APP, "--port", str(port))
    assert run.returncode == 1
    assert run.stderr == (
        f"Error: cannot listen on 127.0.0.1:{port}: the port is in use by another program; choose another with --port\n"
    )


def test_dashboard_refuses_a_short_token_and_says_when_the_extra_is_missing(broker_url: str) -> None:
    run = run_dashboard(broker_url, "-A", APP, "--token", "short")
    assert run.returncode == 1
    assert run.stderr == "Error: --token is too short: use at least 16 random characters\n"
    # Without Starlette/uvicorn installed (simulated: the import fails)
    missing = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.modules['uvicorn'] = None; from rabbittask.cli import main; main()",
            "dashboard",
            "-A",
            APP,
        ],
        env=worker_env(broker_url),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert missing.returncode == 1
    assert "the dashboard needs the 'dashboard' extra" in missing.stderr
    assert "pip install 'rabbittask[dashboard]'" in missing.stderr


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_dashboard_lists_the_partitions_of_a_partitioned_queue_and_where_each_is_active(
    prefix: str, broker_url: str, worker_factory: WorkerFactory, playwright: Any, tmp_path: Path, amqp_cleanup: Any
) -> None:
    from playwright.sync_api import expect

    for name, partitions in (("orders", 8), ("skipping", 2), ("reports", 4)):  # the test app's queues
        for i in range(partitions):
            amqp_cleanup.queue(f"{prefix}.{name}.p{i}")
        amqp_cleanup.queue(f"{prefix}.{name}.dlq")
        amqp_cleanup.exchange(f"rabbittask.{prefix}.{name}.hash")

    ordered_app = "tests.apps.ordered_app:app"
    queue = f"{prefix}.orders"
    env = worker_env(broker_url, {"RT_TEST_PREFIX": prefix, "RT_TEST_LEDGER": str(tmp_path)})
    board = DashboardProcess(["-A", ordered_app, "--port", "0", "--token", TOKEN], env, tmp_path / "dashboard.log")
    worker = worker_factory(ordered_app, "-c", "2", "-Q", queue, prefix=prefix)
    worker.wait_ready(children=2)
    connection = amqp.connect(broker_url)
    channel = connection.channel()
    for key in range(20):  # tasks of 20 keys through the task exchange: most partitions deliver one
        body = b'{"v": 1, "args": ["k%d", 0], "kwargs": {}}' % key
        props = {
            "type": "ordered.apply",
            "content_type": "application/json",
            "headers": {"rt-partition-key": f"k{key}"},
        }
        channel.basic_publish("rabbittask", queue, body, pika.BasicProperties(**props))
    connection.close()
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    try:
        page = browser.new_page()
        page.goto(board.url)
        expect(page.locator(f'#queues tr[data-queue="{queue}"]')).to_be_visible(timeout=WAIT_MS)
        rows = page.locator(f'#queues tr.partition[data-partition^="{queue}.p"]')
        expect(rows).to_have_count(8, timeout=WAIT_MS)  # (the app's other partitioned queues have rows too)
        expect(page.locator(f'#queues tr[data-partition="{queue}.p0"]')).to_contain_text(f"{queue}.p0")
        children = worker.wait_for_children(2)
        expect(rows.filter(has_text="active on").first).to_be_visible(timeout=WAIT_MS)
        active = rows.filter(has_text="active on").first.inner_text()
        assert any(f":{pid}" in active for pid in children), active
    finally:
        browser.close()
        assert board.stop() == 0, board.log_path.read_text()
