"""The worker's log a person can follow: the start-up banner, a line per settled task, JSON lines, task loggers.

And a blocking wait for another task from inside a running task is refused, not deadlocked.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator

import pytest

from rabbittask import App, TaskError
from tests import amqp
from tests.apps.logs_app import make_app
from tests.workers import WorkerProcess, worker_env

APP = "tests.apps.logs_app:app"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
QUEUES = ("main", "aio")


@pytest.fixture(scope="module")
def prefix(broker_url: str) -> Iterator[str]:
    name = f"rt-logs-{uuid.uuid4().hex[:8]}"
    yield name
    amqp.delete(broker_url, [f"{name}.{q}{dlq}" for q in QUEUES for dlq in ("", ".dlq")])


def start(prefix: str, broker_url: str, log_path: object, *args: str) -> WorkerProcess:
    w = WorkerProcess(["-A", APP, *args], worker_env(broker_url, {"RT_TEST_PREFIX": prefix}), log_path)  # type: ignore[arg-type]
    w.wait_for_log("consuming from")
    return w


@pytest.fixture(scope="module")
def text_worker(prefix: str, broker_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    w = start(prefix, broker_url, tmp_path_factory.mktemp("logs") / "worker.log", "-c", "1")
    yield w
    w.stop()


@pytest.fixture
def app(prefix: str, broker_url: str) -> Iterator[App]:
    app = make_app(prefix, broker_url)
    yield app
    app.close()


def test_the_banner_says_what_runs_where_with_which_queues_and_tasks(text_worker: WorkerProcess, prefix: str) -> None:
    log = text_worker.log()
    assert re.search(r"INFO \[\d+\] rabbittask.worker: rabbittask \S+ worker of app 'logs-tests'", log)
    assert "  broker       amqp://guest:***@" in log  # masked
    assert "  concurrency  1 child process(es) x 1 thread(s)" in log
    assert "  prefetch     adaptive, 16 to 1024 per child" in log
    assert f"    {prefix}.main  quorum, delivery limit 20; dead letters in {prefix}.main.dlq" in log
    assert "    logs.aok     -> " in log and f"{prefix}.aio (async)" in log
    assert "  tasks (7)" in log


def test_a_task_that_succeeds_is_one_info_line_with_name_id_and_runtime(text_worker: WorkerProcess, app: App) -> None:
    handle = app.tasks["logs.ok"].delay(1)
    ahandle = app.tasks["logs.aok"].delay(2)
    text_worker.wait_for_log(f"[{ahandle.id}] succeeded in")
    text_worker.wait_for_log(f"[{handle.id}] succeeded in")
    line = next(x for x in text_worker.log().splitlines() if handle.id in x)
    assert re.search(
        rf"INFO \[\d+\] rabbittask.worker.tasks: task logs.ok \[{handle.id}\] succeeded in [\d.]+ (µs|ms|s)$", line
    )


def test_a_retry_says_why_and_when_then_the_success(text_worker: WorkerProcess, app: App) -> None:
    handle = app.tasks["logs.flaky"].delay()
    text_worker.wait_for_log(f"task logs.flaky [{handle.id}] succeeded in")
    retry = next(x for x in text_worker.log().splitlines() if handle.id in x and "raised" in x)
    assert re.search(
        rf"INFO .* task logs.flaky \[{handle.id}\] raised ConnectionError: payment gateway refused; "
        r"attempt 2 in 0\.\d+ s \(at \d\d:\d\d:\d\d\)$",  # 0.1-0.2 s: retry_delay with jitter
        retry,
    )


def test_a_failure_is_an_error_line_with_the_reason_the_dlq_and_the_traceback(
    text_worker: WorkerProcess, app: App, prefix: str
) -> None:
    handle = app.tasks["logs.boom"].delay("orders.csv")
    text_worker.wait_for_log(f"[{handle.id}] failed after")
    log = text_worker.log()
    start = log.index(f"task logs.boom [{handle.id}]")
    line, *rest = log[start:].splitlines()
    assert re.match(
        rf"task logs.boom \[{handle.id}\] failed after [\d.]+ (µs|ms|s) \(task raised\): ValueError: "
        rf"cannot import: orders.csv; dead-lettered to {prefix}.main.dlq$",
        line,
    )
    assert "ERROR" in log[log.rindex("\n", 0, start) : start]
    assert rest[0] == "Traceback (most recent call last):" and 'raise ValueError(f"cannot import: {why}")' in "\n".join(
        rest
    )


def test_a_task_logger_names_the_task_and_its_id(text_worker: WorkerProcess, app: App) -> None:
    handle = app.tasks["logs.charge"].delay(7)
    text_worker.wait_for_log(f"[logs.charge {handle.id}] charging order 7")
    assert re.search(
        rf"INFO \[\d+\] tests.apps.logs_app: \[logs.charge {handle.id}\] charging order 7", text_worker.log()
    )


def test_a_blocking_call_inside_a_running_task_is_refused_instead_of_deadlocking(
    text_worker: WorkerProcess, app: App
) -> None:
    for name in ("logs.joins", "logs.ajoins"):
        with pytest.raises(TaskError) as info:
            app.tasks[name].call(timeout=10)
        assert info.value.type_name == "WaitInTaskRefused"
        assert info.value.remote_message.startswith(f"task {name!r} (id ")
        assert "waits for task 'logs.ok' with .call() while it runs" in info.value.remote_message
        assert "allow_join_in_task=True" in info.value.remote_message


def test_json_logs_are_one_object_per_line_with_the_task_fields(
    prefix: str, broker_url: str, app: App, tmp_path_factory: pytest.TempPathFactory, text_worker: WorkerProcess
) -> None:
    text_worker.stop()  # one worker at a time on these queues
    w = start(prefix, broker_url, tmp_path_factory.mktemp("json") / "worker.log", "--log-format", "json")
    try:
        ok = app.tasks["logs.ok"].delay(1)
        charged = app.tasks["logs.charge"].delay(8)
        boom = app.tasks["logs.boom"].delay("x")
        w.wait_for_log(boom.id)
        w.wait_for_log(charged.id, count=1)
        w.wait_for_log(ok.id)
    finally:
        w.stop()
    records = [json.loads(line) for line in w.log().splitlines() if line.strip()]  # every line is JSON
    banner = next(r for r in records if r.get("event") == "worker-start")
    assert banner["app"] == "logs-tests" and banner["broker"].startswith("amqp://guest:***@")
    assert banner["tasks"]["logs.aok"] == f"{prefix}.aio"
    done = next(r for r in records if r.get("id") == ok.id)
    assert done["outcome"] == "succeeded" and done["task"] == "logs.ok" and done["level"] == "INFO"
    assert done["runtime_s"] >= 0 and re.match(UUID, done["id"])
    failed = next(r for r in records if r.get("id") == boom.id)
    assert failed["outcome"] == "failed" and failed["level"] == "ERROR" and failed["exc_type"] == "ValueError"
    assert failed["reason"] == "task raised" and "Traceback" in failed["traceback"]
    logged = next(r for r in records if r.get("task_id") == charged.id)
    assert logged["message"] == "charging order 8" and logged["task_name"] == "logs.charge"
