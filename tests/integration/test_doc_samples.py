"""Every code sample of the documentation site runs here, as a reader would run it, against a real broker.

The samples are the files in docs/samples (pages include them with pymdownx.snippets, so what a page
shows is what runs here). They run in a virtual host of their own where the broker is local (created and
deleted with rabbitmqctl: nothing is left behind); elsewhere on the test broker with an exchange of their own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import amqp
from tests.redis_server import redis_url_fixture  # noqa: F401 - fixture
from tests.vhosts import own_vhost
from tests.workers import ROOT, WorkerProcess

SAMPLES = ROOT / "docs" / "samples"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
# Sample queues, deleted after the module when the samples could not have a virtual host of their own.
QUEUES = ["mail", "images", "payments", "billing", "orders", "default", "pages", "celery", "accounts", "albums"]
QUEUES += [f"ledger.p{i}" for i in range(8)] + [f"statements.p{i}" for i in range(16)]
QUEUES += [f"profiles.p{i}" for i in range(4)] + ["ledger", "statements", "profiles"]


@pytest.fixture(scope="module")
def samples_env(broker_url: str, redis_url: str) -> Iterator[dict[str, str]]:
    """The environment a reader's shell would have: the broker, the result backend, the samples on the path."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SAMPLES), str(ROOT)]),
        "RABBITTASK_RESULT_BACKEND": redis_url,
    }
    with own_vhost(broker_url, "rt-docs") as url:
        if url is not None:
            env["RABBITTASK_BROKER_URL"] = url
            yield env
            return
        name = f"rt-docs-{uuid.uuid4().hex[:8]}"
        env["RABBITTASK_BROKER_URL"] = broker_url
        env["RABBITTASK_EXCHANGE"] = name  # its delay ladder and events exchange are its own too
        try:
            yield env
        finally:
            amqp.delete(broker_url, [*(q + s for q in QUEUES for s in ("", ".dlq")), f"{name}.join"])


def run_sample(env: dict[str, str], *args: str, timeout_s: float = 60) -> str:
    """Run `python <args>` in docs/samples as a reader would; its output, or fail with it."""
    done = subprocess.run(
        [sys.executable, *args], cwd=SAMPLES, env=env, capture_output=True, text=True, timeout=timeout_s
    )
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def workers(
    samples_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, WorkerProcess]]:
    """One worker per sample app, as the samples' comments say to start them."""
    started: dict[str, WorkerProcess] = {}
    try:
        for spec in (
            "shop.tasks:app",
            "retries:app",
            "task_logging:app",
            "waiting:app",
            "workflows:app",
            "partitions:app",
            "progress_history:app",
        ):
            log = tmp_path_factory.mktemp("samples") / f"{spec.split(':')[0]}.log"
            started[spec] = WorkerProcess(["-A", spec], samples_env, log)
        for w in started.values():
            w.wait_for_log("consuming from")
        yield started
    finally:
        for w in started.values():
            w.stop()


def test_the_quick_start_producer_sends_and_calls(
    samples_env: dict[str, str], workers: dict[str, WorkerProcess]
) -> None:
    out = run_sample(samples_env, "producer.py").splitlines()
    assert re.fullmatch(rf"queued {UUID}", out[0])
    assert out[1:] == ["sent 'hi' to bob@example.com", "{'image_id': 7, 'size': 64}"]
    workers["shop.tasks:app"].wait_for_log("sending 'hello' to ada@example.com")  # the task's print


def test_calling_tasks(samples_env: dict[str, str], workers: dict[str, WorkerProcess]) -> None:
    out = run_sample(samples_env, "calling.py")
    assert "invalid arguments for task 'shop.tasks.send_email': to: Input should be a valid string (got 42)" in out
    assert "sent 'hi' to bob@example.com" in out
    assert "invalid arguments for task 'shop.tasks.thumbnail': image_id: Input should be a valid integer" in out
    assert re.search(rf"{UUID} \[{{'image_id': 0, 'size': 64}}", out)
    assert re.search(rf"sent by name: {UUID}", out)
    workers["shop.tasks:app"].wait_for_log("sending 'by name' to ada@example.com")


def test_results_from_a_backend(samples_env: dict[str, str], workers: dict[str, WorkerProcess]) -> None:
    out = run_sample(samples_env, "results_backend.py").splitlines()
    assert out[0] in ("PENDING", "SUCCESS")
    assert out[1:] == ["sent 'hello' to ada@example.com", "True True False", "sent 'hello' to ada@example.com"]


def test_partitioned_tasks_run_in_order(samples_env: dict[str, str], workers: dict[str, WorkerProcess]) -> None:
    out = run_sample(samples_env, "partitions.py").splitlines()
    assert out == [f"account {a}: 5 entries ran in order" for a in (1, 2, 3)] + ["acme: statement for 2026-11"]


def test_retries_and_dead_letters(samples_env: dict[str, str], workers: dict[str, WorkerProcess]) -> None:
    out = run_sample(samples_env, "retries.py").splitlines()
    assert out == ["order 7 charged on attempt 3", "order 8 refunded", "Reject: order -1 does not exist"]
    log = workers["retries:app"]
    log.wait_for_log("dead-lettered to payments.dlq")
    assert "raised GatewayDown: the payment gateway did not answer; attempt 2 in" in log.log()


def test_a_task_logger_names_the_task_in_the_worker_log(
    samples_env: dict[str, str], workers: dict[str, WorkerProcess]
) -> None:
    task_id = run_sample(samples_env, "task_logging.py").strip()
    workers["task_logging:app"].wait_for_log(f"task_logging: [task_logging.charge {task_id}] charging order 7")


def test_waiting_inside_a_task_is_refused_and_the_ways_instead_work(
    samples_env: dict[str, str], workers: dict[str, WorkerProcess]
) -> None:
    out = run_sample(samples_env, "waiting.py").splitlines()
    assert out == ["order 1 placed", "invoice for order 2", "WaitInTaskRefused"]


def test_workflows_chain_group_and_chord(samples_env: dict[str, str], workers: dict[str, WorkerProcess]) -> None:
    out = run_sample(samples_env, "workflows.py").splitlines()
    assert out == [
        "stored 22 in sizes",
        "stored 0 in fixed",
        "2",
        "[1, 2, 3]",
        "[3, 2, 1]",
        "ChordFailed",
        "task raised",
    ]


def test_raw_pika_producers_follow_the_protocol_page(
    samples_env: dict[str, str], workers: dict[str, WorkerProcess]
) -> None:
    assert run_sample(samples_env, "raw_pika.py").strip() == "published and confirmed"
    workers["shop.tasks:app"].wait_for_log("sending 'from pika' to ada@example.com")
    assert run_sample(samples_env, "rpc_pika.py").strip() == "SUCCESS sent 'rpc' to bob@example.com"


def test_listening_to_events(samples_env: dict[str, str], workers: dict[str, WorkerProcess]) -> None:
    out = run_sample(samples_env, "events_listen.py")
    assert re.fullmatch(r"(worker\.heartbeat|task\.failed\.[\w.]+) \S+ \d+\n", out), out


def test_progress_reaches_the_caller_and_masked_arguments_stay_out_of_the_history(
    samples_env: dict[str, str], workers: dict[str, WorkerProcess]
) -> None:
    lines = run_sample(samples_env, "progress_history.py").splitlines()
    assert lines[0] == "{'rt-argsrepr': \"('ann@example.com', '***', '***')\"}"
    assert lines[1] == "duplicates: False True"
    assert lines[-1] == "resized 5" and len(lines) >= 4  # at least one report heard before the result
    assert all(re.fullmatch(r"[1-5]/5 resized photo-7-[1-5]\.jpg", line) for line in lines[2:-1]), lines


def test_samples_that_need_no_worker(samples_env: dict[str, str]) -> None:
    options = run_sample(samples_env, "tasks_options.py").splitlines()
    assert options[:2] == ["pong", "fetched https://example.com on attempt 1"]
    assert options[2].startswith("task 'broken0': unknown option 'retries' (the option is max_retries)")
    assert options[3].startswith("task 'broken1': unknown option 'qeue' (did you mean queue?)")
    assert options[4] == (
        "task 'broken2': invalid option(s) for @app.task: time_limit: Input should be a valid number (got '1 minute')"
    )
    assert run_sample(samples_env, "sqlite_backend.py").splitlines()[1:] == ["True", "None"]
    settings = run_sample(samples_env, "settings_tour.py").splitlines()
    assert settings[0] == "2 32"
    page = (ROOT / "docs" / "settings.md").read_text()
    assert all(line in page for line in settings[1:]), "settings.md shows other errors than the sample prints"
    assert run_sample(samples_env, "tracing_setup.py").strip() == "TracerProvider"


def test_the_celery_migration_sample_sends_celery_messages(samples_env: dict[str, str]) -> None:
    # No worker: the two Celery messages wait on the queue "celery" (deleted with the samples' queues).
    assert run_sample(samples_env, "celery_migration.py").strip() == "proj.tasks.add proj.tasks.mul"


def test_the_beat_listing_on_the_scheduling_page_is_what_beat_prints(samples_env: dict[str, str]) -> None:
    # Given the schedules of the scheduling page, listed at the page's moment in the page's time zone
    code = (
        "import sys; from datetime import datetime; from rabbittask.cli.beat import format_listing; "
        "from scheduling import app; print(format_listing(app, datetime.fromisoformat(sys.argv[1]).timestamp()))"
    )
    listing = run_sample({**samples_env, "TZ": "UTC"}, "-c", code, "2025-03-29T12:00:00+00:00")
    # Then the page shows exactly that
    page = (ROOT / "docs" / "scheduling.md").read_text()
    shown = re.search(r"```text\n(NAME .*?)```", page, re.DOTALL)
    assert shown is not None, "scheduling.md lost its `beat --list` block"
    assert shown.group(1).rstrip() == listing.rstrip()


def test_every_sample_file_is_run_here() -> None:
    source = Path(__file__).read_text()
    for sample in SAMPLES.glob("*.py"):
        assert f'"{sample.name}"' in source or f"{sample.stem}:app" in source or f"from {sample.stem} " in source, (
            f"docs/samples/{sample.name} is not run by a test"
        )


def test_the_control_plane_sample_pings_inspects_and_revokes(
    samples_env: dict[str, str], workers: dict[str, WorkerProcess]
) -> None:
    out = run_sample(samples_env, "control.py").splitlines()
    assert out[0] == "['pong'] missing: []"
    assert out[1] == "True send_email is served"
    assert re.fullmatch(rf"revoked {UUID}", out[2])
    task_id = out[2].split()[1]
    workers["shop.tasks:app"].wait_for_log(f"[{task_id}] was revoked: dead-lettering it unrun", timeout_s=30)
