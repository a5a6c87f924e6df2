"""Logins, permissions and secrets: least-privilege users work, refusals are fast and clear, and the
password never shows in anything a person or a log collector sees."""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rabbittask import AccessRefused, App, PublishConnectionError
from rabbittask.testing import RabbitNode
from tests.faults.ledger import Ledger
from tests.workers import ROOT, worker_env

pytestmark = [pytest.mark.security, pytest.mark.timeout(120)]
APP = "tests.apps.ledger_app:app"
PASSWORD = f"pw-{uuid.uuid4().hex}"  # what the scan looks for
PREFIX = "acl"
QUEUE = f"{PREFIX}.work"
# The task exchange only (no delay ladder, no dead-letter exchange): publishers of plain tasks.
PUBLISHER_PERMS = ("^$", "^rabbittask$", "^$")
# Workers: consume the task queues, publish retries and dead letters, declare nothing.
WORKER_PERMS = ("^$", r"^rabbittask(\..*)?$", rf"^({PREFIX}\..*|rabbittask(\..*)?)$")


@pytest.fixture(scope="module")
def node() -> Iterator[RabbitNode]:
    with RabbitNode() as node:
        node.ctl("add_vhost", "locked")
        for user, perms in (("publisher", PUBLISHER_PERMS), ("worker", WORKER_PERMS), ("nobody", None)):
            node.ctl("add_user", user, PASSWORD)
            if perms:
                node.ctl("set_permissions", "-p", "/", user, *perms)
        # The admin (guest) applies the topology once, as `rabbittask topology apply` would.
        admin = ledger_app(node.url)
        admin.declare()
        admin.close()
        yield node


def url(node: RabbitNode, user: str, password: str = PASSWORD, vhost: str = "") -> str:
    return f"amqp://{user}:{password}@127.0.0.1:{node.amqp_port}/{vhost}"


def ledger_app(broker_url: str, **settings: Any) -> App:
    app = App("ledger", broker_url=broker_url, connect_timeout_s=3, publish_timeout_s=3, **settings)

    @app.task(queue=QUEUE, name="ledger.work")
    def work(key: str, sleep_s: float = 0.0) -> str: ...

    @app.task(queue=f"{PREFIX}.rpc", name="ledger.echo")  # the worker's app has it too: its queue must exist
    async def echo(key: str, sleep_s: float = 0.0) -> str: ...

    return app


def run_worker(node_url: str, tmp_path: Path, *extra: str, timeout_s: float = 30, **env: str) -> tuple[int, str, float]:
    """Run a worker until it exits (or `timeout_s`); return its exit status, output and run time."""
    environment = worker_env(node_url, {"RT_TEST_PREFIX": PREFIX, "RT_LEDGER_DIR": str(tmp_path), **env})
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "rabbittask", "worker", "-A", APP, *extra],
        env=environment, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s,
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr, time.monotonic() - start


def test_a_publisher_user_that_may_only_write_to_the_task_exchange_can_send_tasks(node: RabbitNode) -> None:
    app = ledger_app(url(node, "publisher"), declare_topology=False)
    try:
        app.tasks["ledger.work"].delay("from-publisher")
        asyncio.run(app.tasks["ledger.work"].adelay("from-publisher-async"))
        # a delayed task goes through the ladder's exchanges: not this user's to write
        with pytest.raises(AccessRefused, match="refused user 'publisher'.*exchange 'rabbittask.delay"):
            app.tasks["ledger.work"].apply_async(("later",), countdown=5)
    finally:
        app.close()


def test_a_publisher_user_that_declares_is_told_about_declare_topology(node: RabbitNode) -> None:
    app = ledger_app(url(node, "publisher"))
    try:
        with pytest.raises(AccessRefused, match="set declare_topology=False") as info:
            app.tasks["ledger.work"].delay("x")
        with pytest.raises(AccessRefused, match="set declare_topology=False"):
            asyncio.run(app.tasks["ledger.work"].adelay("x"))
    finally:
        app.close()
    assert "refused user 'publisher'" in str(info.value) and PASSWORD not in str(info.value)


def test_a_worker_user_without_configure_permission_runs_pre_applied_topology(node: RabbitNode, tmp_path: Path) -> None:
    app = ledger_app(node.url)
    try:
        with app.batch():
            for i in range(20):
                app.tasks["ledger.work"].apply_async((f"w{i}",), message_id=f"w{i}")
    finally:
        app.close()
    ledger = Ledger(tmp_path)
    environment = worker_env(
        url(node, "worker"),
        {"RT_TEST_PREFIX": PREFIX, "RT_LEDGER_DIR": str(tmp_path), "RABBITTASK_DECLARE_TOPOLOGY": "false"},
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "rabbittask", "worker", "-A", APP],
        env=environment, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        ledger.wait_executed({f"w{i}" for i in range(20)}, 20)
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=20)
    assert {f"w{i}" for i in range(20)} <= set(ledger.ends()), output
    assert proc.returncode == 0 and "Traceback" not in output, output
    SEEN.append(output)


def test_a_worker_user_that_tries_to_declare_exits_with_a_clear_error(node: RabbitNode, tmp_path: Path) -> None:
    code, output, took_s = run_worker(url(node, "worker"), tmp_path)
    assert code == 78, output
    assert re.search(r"refused user 'worker' permission to declare or consume acl\.(work|rpc)\b", output), output
    assert "set declare_topology=False" in output and "giving up after 3 attempt(s)" in output
    assert took_s < 15 and "Traceback" not in output
    SEEN.append(output)


def test_a_worker_with_a_wrong_password_gives_up_quickly_instead_of_looping(node: RabbitNode, tmp_path: Path) -> None:
    code, output, took_s = run_worker(url(node, "worker", password=f"wrong-{PASSWORD}"), tmp_path)
    assert code == 78, output
    assert output.count("refused the login: check the user and password") == 3
    assert "attempt 1 of 3" in output and "giving up after 3 attempt(s) (exit status 78)" in output
    assert took_s < 15 and "Traceback" not in output
    SEEN.append(output)


def test_a_vhost_the_user_may_not_use_is_refused_fast_and_clearly(node: RabbitNode, tmp_path: Path) -> None:
    app = ledger_app(url(node, "publisher", vhost="locked"))
    start = time.monotonic()
    try:
        with pytest.raises(AccessRefused, match="access to the virtual host was refused"):
            app.tasks["ledger.work"].delay("x")
        with pytest.raises(AccessRefused, match="refused access to virtual host 'locked'"):
            asyncio.run(app.tasks["ledger.work"].adelay("x"))
    finally:
        app.close()
    assert time.monotonic() - start < 3
    code, output, _ = run_worker(url(node, "nobody"), tmp_path)
    assert code == 78 and "refused access to virtual host '/'" in output, output
    SEEN.append(output)


SEEN: list[str] = []


def test_the_password_never_appears_in_logs_errors_reprs_or_cli_output(
    node: RabbitNode, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)  # pika's and aiormq's debug logs too
    seen: list[str] = list(SEEN)  # the worker outputs of the tests above
    for broker_url in (url(node, "publisher"), url(node, "publisher", password=f"wrong-{PASSWORD}"), url(node, "x")):
        app = ledger_app(broker_url, declare_topology=False)
        seen += [repr(app), repr(app.settings), str(app.settings)]
        work = app.tasks["ledger.work"]
        for send in (lambda w=work: w.delay("scan"), lambda w=work: asyncio.run(w.adelay("scan"))):
            try:
                send()
            except Exception as e:  # noqa: BLE001 - every error is collected and scanned
                seen += [str(e), repr(e), "".join(__import__("traceback").format_exception(e))]
        app.close()
    down = ledger_app(f"amqp://u:{PASSWORD}@127.0.0.1:1/,amqp://u:{PASSWORD}@127.0.0.1:2/")
    with pytest.raises(PublishConnectionError) as info:
        down.tasks["ledger.work"].delay("x")
    with pytest.raises(PublishConnectionError) as ainfo:
        asyncio.run(down.tasks["ledger.work"].adelay("x"))
    down.close()
    seen += [str(info.value), str(ainfo.value), repr(down.settings)]
    assert "127.0.0.1:1, 127.0.0.1:2" in str(info.value)
    env = worker_env(url(node, "publisher"), {"RT_TEST_PREFIX": PREFIX})
    for args in (["topology", "export", "-A", APP], ["topology", "apply", "-A", APP], ["topology", "diff", "-A", APP]):
        command = [sys.executable, "-m", "rabbittask", *args]
        done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        seen += [done.stdout, done.stderr]
        assert done.stdout or done.stderr
    captured = capsys.readouterr()
    seen += [caplog.text, captured.out, captured.err]
    leaks = [text for text in seen if PASSWORD in text]
    assert leaks == [], leaks[0][:2000]
    assert len("".join(seen)) > 2000  # the scan saw real output
