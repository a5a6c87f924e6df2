"""examples/django as a person runs it: `manage.py migrate`, `runserver`, and `rabbittask worker -A
proj.rabbittask:app` with DJANGO_SETTINGS_MODULE, on a real database both processes use: a SQLite
file, and a PostgreSQL database of its own on 127.0.0.1:5432 (skipped, saying so, where none answers).

A view writes a note and sends `process_note` with `delay_on_commit`; the worker reads the row (it is
committed by then) and marks it processed. When the view's transaction rolls back, no task is sent.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rabbittask.testing.workers import WorkerProcess, worker_env
from tests.servers import free_port
from tests.vhosts import own_vhost
from tests.waiting import assert_stays, wait_until
from tests.workers import ROOT

PROJECT = ROOT / "examples" / "django"


PG = "host=127.0.0.1 port=5432 user=postgres connect_timeout=5"


@pytest.fixture
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The example's database settings (environment variables): a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield {"NOTES_DB": str(tmp_path / "notes.sqlite3")}
        return
    psycopg = pytest.importorskip("psycopg")
    name = f"rt_notes_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(f"{PG} dbname=postgres", autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
    except psycopg.OperationalError as e:
        pytest.skip(f"no PostgreSQL answers on 127.0.0.1:5432 as user postgres: {e}")
    try:
        yield {"NOTES_PG": name}
    finally:
        with psycopg.connect(f"{PG} dbname=postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def django_env(broker_url: str, database: dict[str, str]) -> Iterator[dict[str, str]]:
    """The project's environment: its settings, its database, a vhost of its own (fixed queue names)."""
    with own_vhost(broker_url, "rt-django") as url:
        env = worker_env(url or broker_url, {"DJANGO_SETTINGS_MODULE": "proj.settings", **database}, path=[ROOT])
        env["PYTHONPATH"] = f"{PROJECT}:{env['PYTHONPATH']}"
        migrated = subprocess.run(
            [sys.executable, "manage.py", "migrate", "-v", "0"], cwd=PROJECT, env=env, capture_output=True, text=True
        )
        assert migrated.returncode == 0, migrated.stderr
        yield env


@pytest.fixture
def site(django_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """`manage.py runserver` (threaded) on a free port; its base URL."""
    port = free_port()
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        cwd=PROJECT,
        env=django_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        up = (httpx.HTTPError,)
        wait_until(lambda: httpx.get(f"{base}/notes/1", timeout=2), 30, "the Django server", ignoring=up)
        yield base
    finally:
        server.terminate()
        server.wait(10)
        log.close()


@pytest.fixture
def worker(django_env: dict[str, str], tmp_path: Path) -> Iterator[WorkerProcess]:
    w = WorkerProcess(["-A", "proj.rabbittask:app", "-c", "1"], django_env, tmp_path / "worker.log", cwd=PROJECT)
    try:
        w.wait_for_log("consuming from notes", 60)
        yield w
    finally:
        w.stop()


def query(env: dict[str, str], sql: str, *params: Any) -> Any:
    """One row of `sql` (placeholders `%s`) on the example's database."""
    if "NOTES_PG" in env:
        import psycopg

        with psycopg.connect(f"{PG} dbname={env['NOTES_PG']}") as pg:
            return pg.execute(sql, params).fetchone()
    with sqlite3.connect(env["NOTES_DB"], timeout=20) as db:
        return db.execute(sql.replace("%s", "?"), params).fetchone()


def note_row(env: dict[str, str], note_id: int) -> tuple[str, int | None] | None:
    row = query(env, "SELECT status, words FROM notes_note WHERE id = %s", note_id)
    return None if row is None else (row[0], row[1])


@pytest.mark.timeout(180)
@pytest.mark.parametrize("database", ["sqlite", "postgresql"], indirect=True)
def test_a_note_written_in_a_view_is_processed_by_the_worker_and_a_rolled_back_one_sends_nothing(
    django_env: dict[str, str], site: str, worker: WorkerProcess
) -> None:
    # The worker started with Django set up and the Django settings read (exchange "notes")
    assert "exchange     notes" in worker.log() and "notes.tasks.process_note  -> notes" in worker.log()
    # When a view writes a note and sends the task on commit
    made = httpx.post(f"{site}/notes/", json={"text": "three short words"}, timeout=30)
    assert made.status_code == 201, made.text
    note_id, task_id = made.json()["id"], made.json()["task_id"]
    # Then the worker finds the committed row and marks it processed
    assert wait_until(lambda: note_row(django_env, note_id) == ("processed", 3), 60, "the note processed")
    worker.wait_for_log(f"task notes.tasks.process_note [{task_id}] succeeded")
    assert httpx.get(f"{site}/notes/{note_id}", timeout=10).json() == {"id": note_id, "status": "processed", "words": 3}
    # When the view's transaction rolls back after it arranged the send
    refused = httpx.post(f"{site}/notes/?fail=1", json={"text": "never written"}, timeout=30)
    assert refused.status_code == 409 and refused.json()["rolled_back"] is True
    # Then there is no row and the task is never sent
    assert query(django_env, "SELECT count(*) FROM notes_note") == (1,)
    assert_stays(lambda: refused.json()["task_id"] not in worker.log(), 3, "no task for the rolled-back note")
    assert worker.log().count("succeeded in") == 1 and "failed" not in worker.log()


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=PROJECT, env=env, capture_output=True, text=True)


def test_a_misspelt_rabbittask_setting_is_named_with_the_right_one(tmp_path: Path) -> None:
    (tmp_path / "typo_settings.py").write_text("from proj.settings import *\nRABBITTASK_BROKR_URL = 'amqp://x'\n")
    env = worker_env("amqp://guest:guest@localhost:5672/", {"DJANGO_SETTINGS_MODULE": "typo_settings"}, path=[ROOT])
    env["PYTHONPATH"] = f"{tmp_path}:{PROJECT}:{env['PYTHONPATH']}"
    done = run_python("from rabbittask.contrib.django import DjangoApp; DjangoApp('proj')", env)
    assert (
        "rabbittask.errors.ConfigError: Django setting RABBITTASK_BROKR_URL is not a rabbittask setting "
        "(did you mean RABBITTASK_BROKER_URL?)" in done.stderr
    )


def test_the_app_without_django_settings_says_to_set_django_settings_module() -> None:
    env = worker_env("amqp://guest:guest@localhost:5672/", path=[ROOT])
    env.pop("DJANGO_SETTINGS_MODULE", None)
    done = run_python("from rabbittask.contrib.django import DjangoApp; DjangoApp('proj')", env)
    assert "DjangoApp: Django's settings are not configured: set DJANGO_SETTINGS_MODULE" in done.stderr


def test_a_bad_call_fails_in_the_view_not_after_the_commit(tmp_path: Path) -> None:
    env = worker_env("amqp://guest:guest@localhost:5672/", {"DJANGO_SETTINGS_MODULE": "proj.settings"}, path=[ROOT])
    env["PYTHONPATH"] = f"{PROJECT}:{env['PYTHONPATH']}"
    env["NOTES_DB"] = str(tmp_path / "notes.sqlite3")
    code = (
        "import django; django.setup()\n"
        "from django.db import transaction\n"
        "from notes.tasks import process_note\n"
        "try:\n"
        "    with transaction.atomic():\n"
        "        process_note.delay_on_commit('not a number')\n"
        "except Exception as e:\n"
        "    print(type(e).__name__ + ': ' + str(e))\n"
    )
    done = run_python(code, env)
    assert done.stdout.startswith("ArgumentsInvalid: invalid arguments for task 'notes.tasks.process_note'"), done
