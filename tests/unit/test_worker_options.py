"""Worker options: sizes with units, environment variables, the consumer-timeout check, code reload."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from rabbittask import App
from rabbittask.cli import main
from rabbittask.worker.options import WorkerOptions, describe, parse_size_mb
from rabbittask.worker.reload import AppLoader
from rabbittask.worker.timeouts import consumer_timeout_problems, consumer_timeouts


@pytest.mark.parametrize(
    ("text", "mb"),
    [("300MB", 300), ("300", 300), ("300M", 300), ("512MiB", 512), ("1.5GB", 1536), ("2g", 2048), ("512kb", 0.5)],
)
def test_memory_sizes_take_units(text: str, mb: float) -> None:
    assert parse_size_mb(text) == mb


def test_a_size_without_a_number_is_refused_with_an_example() -> None:
    with pytest.raises(ValueError, match="e.g. 300MB"):
        parse_size_mb("lots")


def test_options_come_from_arguments_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RABBITTASK_WORKER_CONCURRENCY", "4")
    monkeypatch.setenv("RABBITTASK_WORKER_MAX_MEMORY_PER_CHILD_MB", "1GB")
    options = WorkerOptions(threads=2)
    assert (options.concurrency, options.threads, options.max_memory_bytes) == (4, 2, 2**30)
    assert WorkerOptions(concurrency=1).concurrency == 1
    with pytest.raises(ValidationError):
        WorkerOptions(concurrency=0)


def make_app() -> App:
    app = App("timeouts")

    @app.task(queue="q", time_limit=3600)
    def long() -> None: ...

    @app.task(queue="q", time_limit=600)
    def medium() -> None: ...

    @app.task(queue="q", time_limit=600)
    async def amedium() -> None: ...

    @app.task(queue="q")
    def free() -> None: ...

    return app


def test_a_time_limit_beyond_the_consumer_timeout_is_reported_with_the_fix() -> None:
    problems = consumer_timeout_problems(make_app(), ["q"], WorkerOptions(prefetch=1))
    (problem,) = problems
    assert "time_limit 3600 s is not shorter than the broker's consumer_timeout (1800 s)" in problem
    assert "consumer_timeout = 3600000" in problem and "--consumer-timeout" in problem


def test_waiting_behind_prefetched_sync_tasks_counts_towards_the_consumer_timeout() -> None:
    problems = consumer_timeout_problems(make_app(), ["q"], WorkerOptions(prefetch=16))
    medium = [p for p in problems if "medium'" in p and "amedium" not in p]
    assert len(problems) == 2 and len(medium) == 1
    assert "with --prefetch 16 and --threads 1 a message can wait behind 15 others" in medium[0]
    assert "Use --prefetch 2 or more --threads" in medium[0]
    assert consumer_timeout_problems(make_app(), ["q"], WorkerOptions(prefetch=1, consumer_timeout_s=7200)) == []


def test_queues_whose_tasks_outlast_the_consumer_timeout_get_one_of_their_own_with_a_margin() -> None:
    app = make_app()

    @app.task(queue="other")
    def quick() -> None: ...

    # One message at a time: the 3600 s task sets it, a quarter more
    assert consumer_timeouts(app, ["q", "other"], WorkerOptions(prefetch=1)) == {"q": 4500.0}
    # Sixteen prefetched behind one thread: the 3600 s task may wait behind 15 others as long
    assert consumer_timeouts(app, ["q"], WorkerOptions(prefetch=16)) == {"q": 16 * 3600 * 1.25}
    # Nothing asked where the broker's own timeout is long enough, or for a queue not consumed
    assert consumer_timeouts(app, ["q"], WorkerOptions(prefetch=1, consumer_timeout_s=7200)) == {}
    assert consumer_timeouts(app, ["other"], WorkerOptions(prefetch=1)) == {}


def test_a_retry_waiting_in_place_counts_towards_the_consumer_timeout_asked_for() -> None:
    app = App("in-place")

    @app.task(queue="orders", partition_by="customer", partitions=4, retry_backoff_max=1500, time_limit=600)
    def place(customer: str) -> None: ...

    assert consumer_timeouts(app, ["orders"], WorkerOptions(prefetch=1)) == {"orders": (1500 + 600) * 1.25}


def test_loop_uvloop_without_uvloop_installed_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if not installed: importing it raises ImportError
    result = CliRunner().invoke(main, ["worker", "-A", "tests.apps.core:app", "--loop", "uvloop"])
    assert result.exit_code == 1
    assert "--loop uvloop needs the uvloop package, which is not installed" in result.output
    assert "pip install 'rabbittask[uvloop]'" in result.output


def test_reload_imports_the_apps_project_modules_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = tmp_path / "reloadable_app.py"
    module.write_text("from rabbittask import App\napp = App('v1')\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def load(spec: str) -> App:
        __import__(spec)
        return sys.modules[spec].app  # type: ignore[no-any-return]

    loader = AppLoader("reloadable_app", load)
    try:
        assert loader.load().name == "v1"
        assert loader.modules == ["reloadable_app"]
        module.write_text("from rabbittask import App\napp = App('v2')\n")
        assert loader.reload().name == "v2"
    finally:
        sys.modules.pop("reloadable_app", None)


def test_the_worker_command_refuses_a_bad_memory_size_before_importing_anything() -> None:
    result = CliRunner().invoke(main, ["worker", "-A", "no.such.module:app", "--max-memory-per-child", "lots"])
    assert result.exit_code == 2
    assert (
        "invalid worker options: --max-memory-per-child (RABBITTASK_WORKER_MAX_MEMORY_PER_CHILD_MB)" in result.output
        and "e.g. 300MB" in result.output
    )


def test_the_worker_help_comes_from_the_option_descriptions() -> None:
    result = CliRunner().invoke(main, ["worker", "--help"], terminal_width=200)
    for field in ("max_tasks_per_child", "max_memory_per_child_mb", "consumer_timeout_s", "strict_timeouts"):
        assert describe(field)[:40] in " ".join(result.output.split())
