"""`.call()` / `.acall()` over direct reply-to against a real broker and a real worker process."""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import rabbittask.amqp.blocking
import rabbittask.amqp.link
from rabbittask import App, PublishNotConfirmed, TaskError
from tests import amqp
from tests.apps.results_app import make_app
from tests.waiting import assert_stays, wait_until
from tests.workers import WorkerProcess, worker_env

APP = "tests.apps.results_app:app"
QUEUES = ("sync", "aio")
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


@pytest.fixture(scope="module")
def prefix(broker_url: str) -> Iterator[str]:
    name = f"rt-results-rpc-{uuid.uuid4().hex[:8]}"
    yield name
    amqp.delete(broker_url, [f"{name}.{q}{dlq}" for q in QUEUES for dlq in ("", ".dlq")])


@pytest.fixture(scope="module")
def worker(prefix: str, broker_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """One worker for the module (4 task threads), so each test does not pay for a start-up."""
    log = tmp_path_factory.mktemp("rpc-worker") / "worker.log"
    w = WorkerProcess(["-A", APP, "--threads", "4"], worker_env(broker_url, {"RT_TEST_PREFIX": prefix}), log)
    try:
        w.wait_for_log("consuming from")
        yield w
    finally:
        w.stop()


@pytest.fixture
def app(prefix: str, broker_url: str, worker: WorkerProcess) -> Iterator[App]:
    app = make_app(prefix, broker_url)
    yield app
    app.close()


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Roles of the RPC connections (async and sync) opened during the test."""
    opened: list[str] = []
    real_connect, real_params = rabbittask.amqp.link.connect, rabbittask.amqp.blocking.connection_params

    async def counting(settings: Any, role: str) -> Any:
        opened.append(role)
        return await real_connect(settings, role)

    def counting_params(settings: Any, role: str) -> Any:
        opened.append(role)
        return real_params(settings, role)

    monkeypatch.setattr(rabbittask.amqp.link, "connect", counting)
    monkeypatch.setattr(rabbittask.amqp.blocking, "connection_params", counting_params)
    return opened


def test_call_returns_the_value_of_a_sync_task(app: App) -> None:
    value = {"to": "a@b.c", "n": [1, 2.5, None, True], "nested": {"x": "é"}}
    assert app.tasks["results.echo"].call(value, timeout=10) == value


def test_acall_returns_the_value_of_an_async_task(app: App) -> None:
    async def main() -> Any:
        return await app.tasks["results.aecho"].acall([1, "two"], timeout=10)

    assert asyncio.run(main()) == [1, "two"]


def test_a_remote_exception_arrives_with_its_type_message_and_traceback(app: App) -> None:
    with pytest.raises(TaskError) as info:
        app.tasks["results.boom"].call("disk full", timeout=10)
    assert info.value.type_name == "ValueError"
    assert info.value.remote_message == "boom: disk full"
    assert "raise ValueError" in info.value.remote_traceback and "Traceback" in info.value.remote_traceback
    assert str(info.value) == "ValueError: boom: disk full"

    async def main() -> None:
        await app.tasks["results.aboom"].acall("missing-key", timeout=10)

    with pytest.raises(TaskError) as ainfo:
        asyncio.run(main())
    assert ainfo.value.type_name == "KeyError" and "missing-key" in ainfo.value.remote_message


def test_a_call_without_a_reply_in_time_raises_timeout_error_naming_task_and_id(app: App) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=rf"no reply from task 'results.slow' \(id {UUID}\) within 0.3 s"):
        app.tasks["results.slow"].call(1.0, timeout=0.3)
    assert time.monotonic() - started < 2.0

    async def main() -> None:
        await app.tasks["results.aecho"].acall(1, sleep_s=1.0, timeout=0.2)

    with pytest.raises(TimeoutError, match=rf"'results.aecho' \(id {UUID}\) within 0.2 s"):
        asyncio.run(main())
    # The late replies land on a connection that no longer waits for them; later calls are not confused.
    assert app.tasks["results.echo"].call("after", timeout=10) == "after"


def test_100_concurrent_acalls_share_one_reply_consumer_and_each_get_their_own_answer(
    app: App, connects: list[str]
) -> None:
    aecho, echo = app.tasks["results.aecho"], app.tasks["results.echo"]

    async def main() -> list[Any]:
        calls = [(aecho if i % 2 else echo).acall({"i": i}, timeout=30) for i in range(100)]
        return await asyncio.gather(*calls)

    assert asyncio.run(main()) == [{"i": i} for i in range(100)]
    assert connects == ["rpc"]  # one connection, so one reply consumer, for all 100 calls


def test_8_threads_calling_at_once_share_one_reply_consumer_and_each_get_their_own_answer(
    app: App, connects: list[str]
) -> None:
    results: dict[int, list[Any]] = {}
    barrier = threading.Barrier(8)

    def caller(t: int) -> None:
        barrier.wait()
        results[t] = [app.tasks["results.echo"].call([t, i], timeout=30) for i in range(25)]

    threads = [threading.Thread(target=caller, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == {t: [[t, i] for i in range(25)] for t in range(8)}
    assert connects == ["rpc"]


def test_an_idle_sync_connection_stays_open_and_is_reused(
    prefix: str, broker_url: str, worker: WorkerProcess, connects: list[str]
) -> None:
    # Given an app whose heartbeat (1 s) would let the broker drop a connection idle for 2-3 s
    app = make_app(prefix, broker_url, heartbeat_s=1)
    try:
        assert app.tasks["results.echo"].call(1, timeout=10) == 1
        # When the process makes no call for longer than that
        time.sleep(3.5)
        # Then the ticker kept the connection alive: the next call works on the same connection
        assert app.tasks["results.echo"].call(2, timeout=10) == 2
        assert connects == ["rpc"]
    finally:
        app.close()


def test_a_sync_call_works_inside_a_running_event_loop(app: App) -> None:
    async def main() -> Any:
        return app.tasks["results.echo"].call("from a coroutine", timeout=10)  # blocks the loop, still works

    assert asyncio.run(main()) == "from a coroutine"


def test_a_result_that_is_not_json_fails_the_task_naming_its_type(app: App, prefix: str, broker_url: str) -> None:
    with pytest.raises(TaskError) as info:
        app.tasks["results.opaque"].call(timeout=10)
    assert info.value.type_name == "TypeError"
    assert info.value.remote_message.startswith("result of type Opaque is not JSON-serialisable")
    # The task failed, so its message is dead-lettered with the reason (beside other tests' failures).
    dead = wait_until(
        lambda: [p for p, _ in amqp.get_all(broker_url, f"{prefix}.sync.dlq") if p.type == "results.opaque"],
        15,
        "the task's message reaches the dead-letter queue",
        interval_s=0.1,
    )
    assert dead[0].headers["rt-reason"] == "result not JSON-serialisable"


def test_a_reply_to_a_caller_that_is_gone_is_dropped_quietly_and_the_task_acked(
    app: App, prefix: str, broker_url: str, worker: WorkerProcess
) -> None:
    # Given a call that gave up, from a process that then closed its connection
    with pytest.raises(TimeoutError):
        app.tasks["results.slow"].call(0.5, timeout=0.1)
    app.close()

    # When the worker finishes the task and replies to the reply-to of a connection that is gone
    # Then the task was acked, nothing was dead-lettered, and the worker said nothing about the reply
    def quiet() -> bool:
        log = worker.log()
        return amqp.depth(broker_url, f"{prefix}.sync.dlq") == 0 and "reply not" not in log

    assert_stays(quiet, 1.0, "no dead letter and no word of the reply while the task ends")
    amqp.wait_depth(broker_url, f"{prefix}.sync", 0)
    assert amqp.depth(broker_url, f"{prefix}.sync.dlq") == 0
    log = worker.log()
    assert "reply not" not in log and "returned by the broker" not in log
    assert not re.search(r" WARNING .*results\.(slow|echo|aecho)", log), log[-2000:]


def test_a_call_to_a_queue_that_is_gone_fails_at_once(broker_url: str, unique_name: str) -> None:
    queue = unique_name  # the session deletes what is left under it (the app's own delay ladder, too)
    app = App("gone", broker_url=broker_url, exchange=f"{queue}.x")

    @app.task(queue=queue, name="gone.echo")
    def echo(x: int) -> int:
        return x

    try:
        with pytest.raises(TimeoutError):  # opens the RPC channel, which declares the queue; no worker
            echo.call(1, timeout=0.2)
        amqp.delete(broker_url, [queue])
        started = time.monotonic()
        with pytest.raises(PublishNotConfirmed, match=f"no queue is bound to routing key '{queue}'"):
            echo.call(1, timeout=10)
        assert time.monotonic() - started < 5
    finally:
        app.close()
        amqp.delete(broker_url, [queue, f"{queue}.dlq"], [f"{queue}.x", f"{queue}.x.dlx"])


def test_a_remote_builtin_exception_is_caught_by_its_own_type(app: App) -> None:
    with pytest.raises(ValueError) as info:  # not only `except TaskError`
        app.tasks["results.boom"].call("bad input", timeout=10)
    assert isinstance(info.value, TaskError) and info.value.type_name == "ValueError"
    assert str(info.value) == "ValueError: boom: bad input"

    async def main() -> None:
        with pytest.raises(KeyError) as info:
            await app.tasks["results.aboom"].acall("missing", timeout=10)
        assert str(info.value) == "KeyError: 'missing'"  # the message as the worker saw it, not re-quoted

    asyncio.run(main())
