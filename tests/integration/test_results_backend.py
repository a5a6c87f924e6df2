"""The Redis result backend with a real worker: get, status, expiry, forget, and store-before-ack."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from rabbittask import App, ConfigError, TaskError
from rabbittask.results.backends.redis import RedisBackend, result_key
from tests import amqp
from tests.apps.results_app import make_app
from tests.redis_server import RedisServer, redis_server_fixture, redis_url_fixture  # noqa: F401 - fixtures
from tests.waiting import wait_until
from tests.workers import WorkerProcess, worker_env

APP = "tests.apps.results_app:app"
EXPIRES_S = 2.0
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def queue_names(prefix: str) -> list[str]:
    return [f"{prefix}.{q}{dlq}" for q in ("sync", "aio") for dlq in ("", ".dlq")]


def start_worker(prefix: str, broker_url: str, log: Any, **env: str) -> WorkerProcess:
    w = WorkerProcess(["-A", APP, "--threads", "4"], worker_env(broker_url, {"RT_TEST_PREFIX": prefix, **env}), log)
    w.wait_for_log("consuming from")
    return w


@pytest.fixture(scope="module")
def prefix(broker_url: str) -> Iterator[str]:
    name = f"rt-results-backend-{uuid.uuid4().hex[:8]}"
    yield name
    amqp.delete(broker_url, queue_names(name))


@pytest.fixture(scope="module")
def worker(
    prefix: str, broker_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """One worker for the module, storing results in Redis for EXPIRES_S seconds."""
    log = tmp_path_factory.mktemp("backend-worker") / "worker.log"
    env = {"RABBITTASK_RESULT_BACKEND": redis_url, "RABBITTASK_RESULT_EXPIRES_S": str(EXPIRES_S)}
    w = start_worker(prefix, broker_url, log, **env)
    yield w
    w.stop()


@pytest.fixture
def app(prefix: str, broker_url: str, redis_url: str, worker: WorkerProcess) -> Iterator[App]:
    app = make_app(prefix, broker_url, result_backend=redis_url)
    yield app
    app.close()


def test_get_returns_the_result_and_status_goes_from_pending_to_success(app: App) -> None:
    handle = app.tasks["results.slow"].delay(0.3)
    assert handle.status == "PENDING"
    assert handle.get(timeout=10) == "late"
    assert handle.status == "SUCCESS"
    # A handle rebuilt from the id alone (e.g. kept in a web session) reads the same result.
    assert app.tasks["results.slow"].handle(handle.id).get(timeout=1) == "late"


def test_get_raises_the_remote_failure_and_status_is_failure(app: App) -> None:
    handle = app.tasks["results.boom"].delay("no route to host")
    with pytest.raises(TaskError) as info:
        handle.get(timeout=10)
    assert info.value.type_name == "ValueError" and info.value.remote_message == "boom: no route to host"
    assert "raise ValueError" in info.value.remote_traceback
    assert handle.status == "FAILURE"


def test_aget_astatus_and_aforget_of_an_async_task(app: App) -> None:
    async def main() -> None:
        handle = await app.tasks["results.aecho"].adelay({"k": [1, 2]}, sleep_s=0.2)
        assert await handle.astatus() == "PENDING"
        assert await handle.aget(timeout=10) == {"k": [1, 2]}
        assert await handle.astatus() == "SUCCESS"
        await handle.aforget()
        assert await handle.astatus() == "PENDING"

    asyncio.run(main())


def test_results_expire_after_result_expires_s(app: App, redis_url: str) -> None:
    handle = app.tasks["results.echo"].delay(7)
    assert handle.get(timeout=10) == 7
    client = redis.Redis.from_url(redis_url)
    try:
        assert 0 < client.pttl(result_key(handle.id)) <= EXPIRES_S * 1000
    finally:
        client.close()
    wait_until(lambda: handle.status == "PENDING", EXPIRES_S + 3, "the result expires", interval_s=0.1)


def test_forget_deletes_a_result_before_it_expires(app: App) -> None:
    handle = app.tasks["results.echo"].delay("x")
    assert handle.get(timeout=10) == "x"
    handle.forget()
    assert handle.status == "PENDING"


def test_get_without_a_result_in_time_raises_timeout_error_naming_task_and_id(app: App) -> None:
    handle = app.tasks["results.slow"].delay(1.0)
    with pytest.raises(TimeoutError, match=rf"no result for task 'results.slow' \(id {UUID}\) within 0.2 s"):
        handle.get(timeout=0.2)
    assert handle.get(timeout=10) == "late"


def test_a_task_with_ignore_result_stores_nothing(app: App, prefix: str, broker_url: str, redis_url: str) -> None:
    handle = app.tasks["results.quiet"].delay(5)
    with pytest.raises(ConfigError, match="'results.quiet' is declared with ignore_result=True"):
        handle.get(timeout=1)
    amqp.wait_depth(broker_url, f"{prefix}.sync", 0)
    assert RedisBackend(redis_url).fetch(handle.id) is None


def test_a_result_that_is_not_json_is_stored_as_a_failure_naming_its_type(app: App) -> None:
    handle = app.tasks["results.opaque"].delay()
    with pytest.raises(TaskError, match="result of type Opaque is not JSON-serialisable") as info:
        handle.get(timeout=10)
    assert info.value.type_name == "TypeError"
    assert handle.status == "FAILURE"


def test_a_result_is_stored_before_its_message_is_acked(
    broker_url: str,
    redis_server: RedisServer,
    tmp_path: Any,
) -> None:
    # Given a worker whose Redis is down (the server is not started yet)
    prefix = f"rt-results-ack-{uuid.uuid4().hex[:8]}"
    w = start_worker(
        prefix,
        broker_url,
        tmp_path / "worker.log",
        RABBITTASK_RESULT_BACKEND=redis_server.url,
        RABBITTASK_RESULT_STORE_TIMEOUT_S="0.3",
    )
    app = make_app(prefix, broker_url, result_backend=redis_server.url)
    try:
        # When a task runs and its result cannot be stored
        handle = app.tasks["results.echo"].delay(42)
        w.wait_for_log("its result could not be stored")
        # Then the message is not acked: it goes back to the queue and runs again until the store succeeds
        redis_server.start()
        assert handle.get(timeout=20) == 42
        w.stop()  # an unacked message would now be back in the queue
        amqp.wait_depth(broker_url, f"{prefix}.sync", 0)
        assert amqp.depth(broker_url, f"{prefix}.sync.dlq") == 0
    finally:
        app.close()
        w.stop()
        amqp.delete(broker_url, queue_names(prefix))


def test_a_handle_answers_the_questions_celery_users_ask(app: App) -> None:
    ok = app.tasks["results.slow"].delay(0.3)
    assert (ok.ready(), ok.successful(), ok.failed(), ok.state) == (False, False, False, "PENDING")
    assert ok.get(timeout=10) == "late"
    assert (ok.ready(), ok.successful(), ok.failed(), ok.state) == (True, True, False, "SUCCESS")
    bad = app.tasks["results.boom"].delay("disk full")
    error = bad.get(timeout=10, propagate=False)  # returned, not raised
    assert isinstance(error, TaskError) and isinstance(error, ValueError)
    assert str(error) == "ValueError: boom: disk full"
    assert (bad.ready(), bad.successful(), bad.failed(), bad.state) == (True, False, True, "FAILURE")


def test_a_producer_without_the_task_code_sends_by_name_and_reads_the_result(
    prefix: str, broker_url: str, redis_url: str, worker: WorkerProcess
) -> None:
    # Given a producer app that declares no task at all (it does not import the task code)
    producer = App("producer", broker_url=broker_url, result_backend=redis_url)
    try:
        # When it sends tasks by name, to their queue
        handle = producer.send_task("results.echo", args=[{"n": 1}], queue=f"{prefix}.sync")
        ahandle = asyncio.run(producer.asend_task("results.aecho", kwargs={"value": [2]}, queue=f"{prefix}.aio"))
        # Then the worker runs them, and the handles read their results
        assert handle.get(timeout=10) == {"n": 1}
        assert ahandle.get(timeout=10) == [2]
        assert handle.task_name == "results.echo" and handle.queue == f"{prefix}.sync"
    finally:
        producer.close()
