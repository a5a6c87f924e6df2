"""rabbittask producers send Celery protocol 2 messages that real Celery workers (solo, prefork) run; the
results come back through Celery's Redis backend; a mixed deployment runs each task once."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rabbittask import App, ConfigError, TaskError
from tests import amqp
from tests.apps.celery_app import make_app
from tests.celery_side import CeleryWorker, celery_app, close
from tests.redis_server import redis_url_fixture  # noqa: F401 - fixture
from tests.waiting import wait_until
from tests.workers import WorkerProcess, worker_env


@pytest.fixture
def queue(broker_url: str) -> Iterator[str]:
    name = f"rt-celery-send-{uuid.uuid4().hex[:8]}"
    yield name
    amqp.delete(broker_url, [name, f"{name}.dlq"], [name])


@pytest.mark.parametrize(("pool", "backend"), [("solo", "redis"), ("prefork", "redis"), ("prefork", "rpc")])
def test_send_task_with_celery_true_runs_on_a_celery_worker_and_get_reads_its_result(
    pool: str, backend: str, queue: str, broker_url: str, redis_url: str, tmp_path: Path
) -> None:
    url = redis_url if backend == "redis" else "rpc://"
    worker = CeleryWorker(broker_url, queue, tmp_path / "celery.log", pool=pool, backend=url)
    app = App("producer", broker_url=broker_url, celery_result_backend=url)
    try:
        handle = app.send_task("proj.tasks.add", args=[2, 3], queue=queue, celery=True)
        assert handle.get(timeout=30) == 5
        assert handle.status == "SUCCESS"
        failed = app.send_task("proj.tasks.fail", args=["quota"], queue=queue, celery=True)
        with pytest.raises(ValueError, match="boom: quota") as info:
            failed.get(timeout=30)
        assert isinstance(info.value, TaskError) and info.value.type_name == "ValueError"
        wait_until(lambda: "succeeded" in worker.log() and "raised unexpected: ValueError" in worker.log(), 20)
    finally:
        app.close()
        worker.stop()


def test_an_accept_celery_task_sends_celery_messages_with_delay(
    queue: str, broker_url: str, redis_url: str, tmp_path: Path
) -> None:
    worker = CeleryWorker(broker_url, queue, tmp_path / "celery.log", pool="solo", backend=redis_url)
    app = make_app(queue, broker_url, celery_result_backend=redis_url)
    try:
        assert app.tasks["proj.tasks.add"].apply_async((40, 2), countdown=0.5).get(timeout=30) == 42
    finally:
        app.close()
        worker.stop()


def test_a_send_task_without_a_celery_result_backend_says_what_to_set(queue: str, broker_url: str) -> None:
    app = App("producer", broker_url=broker_url)
    declaring = make_app(queue, broker_url)
    try:
        declaring.declare()  # the Celery queue, declared as Celery would
        handle = app.send_task("proj.tasks.add", args=[1, 1], queue=queue, celery=True)
        with pytest.raises(ConfigError, match="has no celery_result_backend, so results of Celery messages"):
            handle.get(timeout=1)
    finally:
        declaring.close()
        app.close()


def _runs(ledger: Path) -> list[tuple[str, str]]:
    lines = ledger.read_text().splitlines() if ledger.exists() else []
    return [(p[0], p[2] if len(p) > 2 else "rabbittask") for p in (line.split() for line in lines)]


@pytest.mark.parametrize("count", [pytest.param(1000, id="1k"), pytest.param(10_000, id="10k", marks=pytest.mark.slow)])
def test_celery_and_rabbittask_workers_on_one_celery_queue_run_each_task_once(
    count: int, queue: str, broker_url: str, tmp_path: Path
) -> None:
    # Given a Celery worker (prefork) and a rabbittask worker on the same Celery queue
    ledger = tmp_path / "ledger"
    celery_worker = CeleryWorker(broker_url, queue, tmp_path / "celery.log", pool="prefork", ledger=str(ledger))
    env = {"RT_TEST_PREFIX": queue, "RT_LEDGER": str(ledger)}
    rt_worker = WorkerProcess(["-A", "tests.apps.celery_app:app"], worker_env(broker_url, env), tmp_path / "rt.log")
    rt_worker.wait_for_log("consuming from")
    producer = celery_app(broker_url, queue, backend=None)
    app = make_app(queue, broker_url)
    try:
        # When half the tasks come from a Celery producer and half from rabbittask's (celery=True, in a batch)
        ids = [producer.tasks["proj.tasks.add"].delay(i, 1).id for i in range(count // 2)]
        with app.batch():
            ids += [app.tasks["proj.tasks.add"].delay(i, 1).id for i in range(count - count // 2)]
        # Then every task runs exactly once, none is lost, and both kinds of worker took a share
        wait_until(lambda: len(_runs(ledger)) >= count, 60 + count / 50, lambda: f"{len(_runs(ledger))} of {count} ran")
        amqp.wait_depth(broker_url, queue, 0)
        runs = _runs(ledger)
        assert sorted(i for i, _ in runs) == sorted(ids)
        kinds = {k for _, k in runs}
        assert kinds == {"celery", "rabbittask"}, kinds
        assert amqp.depth(broker_url, f"{queue}.dlq") == 0
    finally:
        close(producer)
        app.close()
        rt_worker.stop()
        celery_worker.stop()
