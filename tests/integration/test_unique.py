"""Unique tasks on RabbitMQ alone: one send per key within the window, across producers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rabbittask import App, TaskHandle
from tests.apps.hist import make_app
from tests.integration.test_history import APP
from tests.waiting import assert_stays, wait_until
from tests.workers import WorkerFactory


@pytest.fixture
def prefix(unique_name: str, amqp_cleanup: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    for queue in ("jobs", "jobs.dlq", "x.history"):
        amqp_cleanup.queue(f"{unique_name}.{queue}")
    amqp_cleanup.exchange(f"{unique_name}.x.events")
    monkeypatch.setenv("RT_TEST_LEDGER", str(tmp_path))
    return unique_name


@pytest.fixture
def app(prefix: str, broker_url: str) -> Iterator[App]:
    app = make_app(prefix, broker_url)
    yield app
    app.close()


@pytest.mark.timeout(120)
def test_ten_producers_sending_the_same_key_a_hundred_times_each_run_it_once(
    prefix: str, broker_url: str, worker_factory: WorkerFactory, tmp_path: Path
) -> None:
    worker_factory(APP, prefix=prefix).wait_for_log("consuming from")
    handles: list[TaskHandle] = []
    lock = threading.Lock()
    start = threading.Barrier(10)

    def producer() -> None:
        app = make_app(prefix, broker_url)  # a producer of its own: its own connections
        try:
            start.wait()
            mine = [app.tasks["hist.once"].delay("invoice-42") for _ in range(100)]  # type: ignore[attr-defined]
        finally:
            app.close()
        with lock:
            handles.extend(mine)

    threads = [threading.Thread(target=producer) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    # Then one send went out and 999 callers learnt theirs was a duplicate
    assert len(handles) == 1000
    assert sum(not h.duplicate for h in handles) == 1
    # And the task ran once
    ledger = tmp_path / f"{prefix}.once"
    wait_until(lambda: ledger.exists() and ledger.read_text() == "invoice-42\n", 20)
    assert_stays(lambda: ledger.read_text() == "invoice-42\n", 1.0)


@pytest.mark.timeout(60)
def test_a_unique_key_function_decides_what_is_a_duplicate_and_the_window_ends(app: App) -> None:
    report = app.tasks["hist.report"]  # unique_for=4 (wide enough for a loaded machine), keyed by user only
    first = report.delay("ann", day="mon")  # type: ignore[attr-defined]
    assert not first.duplicate
    assert report.delay("ann", day="tue").duplicate  # type: ignore[attr-defined]  # same user: same key
    assert not report.delay("bob").duplicate  # type: ignore[attr-defined]
    # After the window the key is free again
    wait_until(lambda: not report.delay("ann").duplicate, 20)  # type: ignore[attr-defined]
