"""A real Celery app sends, a rabbittask worker runs: results over rpc:// and Redis, errors, eta, expiry, pickle."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, chain
from celery.exceptions import TaskRevokedError

from rabbittask.worker.outcome import Reason
from tests import amqp
from tests.celery_side import celery_app, close
from tests.redis_server import redis_url_fixture  # noqa: F401 - fixture
from tests.workers import WorkerProcess, worker_env

APP = "tests.apps.celery_app:app"


def start_worker(queue: str, broker_url: str, log: Path, ledger: Path, **env: str) -> WorkerProcess:
    env = {"RT_TEST_PREFIX": queue, "RT_LEDGER": str(ledger), **env}
    w = WorkerProcess(["-A", APP, "--threads", "4"], worker_env(broker_url, env), log)
    w.wait_for_log("consuming from")
    return w


def runs(ledger: Path) -> list[tuple[str, int]]:
    if not ledger.exists():
        return []
    return [(i, int(a)) for i, a in (line.split() for line in ledger.read_text().splitlines())]


@pytest.fixture(scope="module")
def queue(broker_url: str) -> Iterator[str]:
    name = f"rt-celery-{uuid.uuid4().hex[:8]}"
    yield name
    amqp.delete(broker_url, [name, f"{name}.dlq"], [name])


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("celery-ledger") / "runs"


@pytest.fixture(scope="module")
def worker(queue: str, broker_url: str, ledger: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    log = tmp_path_factory.mktemp("celery-worker") / "worker.log"
    w = start_worker(queue, broker_url, log, ledger, RABBITTASK_CELERY_RESULT_BACKEND="rpc://")
    yield w
    w.stop()


@pytest.fixture(scope="module")
def celery(queue: str, broker_url: str, worker: Any) -> Iterator[Celery]:
    app = celery_app(broker_url, queue)
    yield app
    close(app)


def dead_letters(broker_url: str, queue: str, count: int) -> list[tuple[Any, bytes]]:
    amqp.wait_depth(broker_url, f"{queue}.dlq", count)
    return amqp.get_all(broker_url, f"{queue}.dlq")


def test_celery_delay_runs_on_a_rabbittask_worker_and_get_returns_over_rpc(celery: Celery, ledger: Path) -> None:
    result = celery.tasks["proj.tasks.add"].delay(2, 3)
    assert result.get(timeout=20) == 5
    assert (result.id, 1) in runs(ledger)
    assert result.status == "SUCCESS"


def test_a_task_that_raises_comes_back_to_the_celery_caller_as_the_error_and_is_dead_lettered(
    celery: Celery, broker_url: str, queue: str
) -> None:
    result = celery.tasks["proj.tasks.fail"].delay("disk full")
    with pytest.raises(ValueError, match="boom: disk full"):
        result.get(timeout=20)
    assert result.status == "FAILURE" and "raise ValueError" in (result.traceback or "")
    [(props, body)] = dead_letters(broker_url, queue, 1)
    assert props.headers["rt-reason"] == Reason.FAILED.value and props.headers["id"] == result.id
    assert props.content_type == "application/json" and body.startswith(b'[["disk full"]')  # still a Celery message


def test_countdown_waits_on_the_broker_and_runs_once(celery: Celery, ledger: Path) -> None:
    start = time.monotonic()
    result = celery.tasks["proj.tasks.add"].apply_async((1, 1), countdown=2)
    assert result.get(timeout=30) == 2
    assert time.monotonic() - start >= 1.9
    assert [r for r in runs(ledger) if r[0] == result.id] == [(result.id, 1)]


def test_a_message_that_expires_before_it_is_due_is_revoked_for_the_caller(
    celery: Celery, broker_url: str, queue: str, ledger: Path
) -> None:
    result = celery.tasks["proj.tasks.add"].apply_async((1, 2), countdown=3, expires=1)
    with pytest.raises(TaskRevokedError):
        result.get(timeout=30)
    assert result.id not in [i for i, _ in runs(ledger)]
    letters = dead_letters(broker_url, queue, 1)
    assert [p.headers["rt-reason"] for p, _ in letters] == [Reason.EXPIRED.value]


def test_retries_keep_the_celery_format_and_the_caller_gets_the_last_result(celery: Celery, ledger: Path) -> None:
    result = celery.tasks["proj.tasks.flaky"].delay(3)
    assert result.get(timeout=30) == 3
    assert [a for i, a in runs(ledger) if i == result.id] == [1, 2, 3]


def test_a_pickled_message_is_dead_lettered_unread_with_how_to_switch_to_json(
    celery: Celery, broker_url: str, queue: str
) -> None:
    result = celery.tasks["proj.tasks.add"].apply_async((1, 2), serializer="pickle")
    with pytest.raises(Exception, match="task_serializer='json'"):
        result.get(timeout=20)
    [(props, _)] = dead_letters(broker_url, queue, 1)
    assert props.headers["rt-reason"] == Reason.NOT_ACCEPTED.value
    assert props.content_type == "application/x-python-serialize"
    assert "application/x-python-serialize" in props.headers["rt-exc-message"]


def test_headers_of_celery_reach_the_task_context(celery: Celery) -> None:
    result = celery.tasks["proj.tasks.headers"].delay()
    assert result.get(timeout=20) == {"root_id": result.id, "parent_id": None, "group": None, "attempt": 1}


def test_redis_backend_results_and_errors_reach_the_celery_caller(
    broker_url: str, redis_url: str, tmp_path: Path
) -> None:
    queue = f"rt-celery-redis-{uuid.uuid4().hex[:8]}"
    w = start_worker(
        queue, broker_url, tmp_path / "w.log", tmp_path / "runs", RABBITTASK_CELERY_RESULT_BACKEND=redis_url
    )
    app = celery_app(broker_url, queue, backend=redis_url)
    try:
        assert app.tasks["proj.tasks.add"].delay(20, 22).get(timeout=20) == 42
        failed = app.tasks["proj.tasks.fail"].delay("no route")
        with pytest.raises(ValueError, match="boom: no route"):
            failed.get(timeout=20)
        assert app.AsyncResult(failed.id).status == "FAILURE"
    finally:
        close(app)
        w.stop()
        amqp.delete(broker_url, [queue, f"{queue}.dlq"], [queue])


def test_a_queue_celery_declared_with_its_own_arguments_is_taken_as_it_is(broker_url: str, tmp_path: Path) -> None:
    # Given a Celery queue declared by Celery with arguments rabbittask would not give it (max priority 10)
    queue = f"rt-celery-prio-{uuid.uuid4().hex[:8]}"
    app = celery_app(broker_url, queue, task_queue_max_priority=10)
    with app.connection_for_write() as conn:
        app.amqp.queues[queue](conn.default_channel).declare()
    try:
        # When a rabbittask worker consumes it: no mismatch, no redeclaration, and it runs Celery's messages
        w = start_worker(
            queue, broker_url, tmp_path / "w.log", tmp_path / "runs", RABBITTASK_CELERY_RESULT_BACKEND="rpc://"
        )
        assert app.tasks["proj.tasks.add"].apply_async((2, 2), priority=5).get(timeout=20) == 4
        w.stop()
        assert "TopologyMismatch" not in w.log() and "PRECONDITION" not in w.log()
    finally:
        close(app)
        amqp.delete(broker_url, [queue, f"{queue}.dlq"], [queue])


def test_a_celery_chain_and_a_link_callback_run_on_rabbittask_workers(celery: Celery) -> None:
    add = celery.tasks["proj.tasks.add"]
    # A chain: each next step is sent on by the worker, under the id Celery gave it
    assert chain(add.s(1, 2), add.s(10), add.s(100)).apply_async().get(timeout=30) == 113
    # A link callback gets the result as its first argument
    callback = add.s(5)
    callback.freeze()
    assert add.apply_async((1, 1), link=callback).get(timeout=20) == 2
    assert celery.AsyncResult(callback.id).get(timeout=20) == 7


def test_a_dead_lettered_celery_message_replays_to_its_queue_and_runs_again(
    celery: Celery, broker_url: str, queue: str, worker: Any
) -> None:
    from rabbittask.ops.dlq import DeadLetterQueue
    from rabbittask.settings import Settings

    result = celery.tasks["proj.tasks.add"].delay("a", "b")  # not ints: dead-lettered, invalid arguments
    with pytest.raises(Exception, match="invalid arguments"):
        result.get(timeout=20)
    amqp.wait_depth(broker_url, f"{queue}.dlq", 1)
    replayed = DeadLetterQueue(Settings(broker_url=broker_url), queue).replay()
    assert replayed.replayed == [result.id]
    amqp.wait_depth(broker_url, f"{queue}.dlq", 1)  # it ran again on the Celery queue, and failed again
    assert worker.log().count(f"[{result.id}]") >= 2
    [(props, _)] = amqp.get_all(broker_url, f"{queue}.dlq")
    assert props.headers["rt-reason"] == Reason.INVALID.value and props.headers["task"] == "proj.tasks.add"
