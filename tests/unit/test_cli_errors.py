"""What the CLI says when -A, -Q or the environment is wrong: what happened, to which object, what to do."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from rabbittask.cli import main


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project directory as the current directory (the CLI puts it on the path), with a package `proj`."""
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "__init__.py").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m == "proj" or m.startswith("proj.")]:
        del sys.modules[name]  # the next test's `proj` is another directory


def module(project: Path, name: str, source: str) -> None:
    (project / "proj" / f"{name}.py").write_text(textwrap.dedent(source))


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_an_app_module_that_raises_on_import_is_shown_with_its_traceback(project: Path) -> None:
    module(project, "broken_config", 'CONFIG = {"a": 1}\nvalue = CONFIG["b"]\n')
    code, out = run("topology", "export", "-A", "proj.broken_config:app")
    assert code == 1
    assert out.startswith(
        "Error: cannot import app module 'proj.broken_config': it raised KeyError while being imported\n"
        "Traceback (most recent call last):\n"
    )
    assert 'broken_config.py", line 2, in <module>\n    value = CONFIG["b"]' in out
    assert out.rstrip().endswith("KeyError: 'b'")
    assert "importlib" not in out and "cli/common.py" not in out


def test_a_module_that_is_not_on_the_path_says_where_to_run_from(project: Path) -> None:
    code, out = run("topology", "export", "-A", "shop.tasks:app")
    assert code == 1
    assert out.strip() == (
        "Error: cannot import app module 'shop.tasks' (-A shop.tasks:app): no module named 'shop' on the Python "
        f"path. Run the command from your project's root directory ({project} is on the path), set PYTHONPATH, "
        "or install your project in this environment"
    )


def test_a_missing_import_inside_the_app_module_is_its_failure_not_a_wrong_path(project: Path) -> None:
    module(project, "needs_lib", "import not_installed_lib_xyz\n")
    code, out = run("topology", "export", "-A", "proj.needs_lib:app")
    assert code == 1
    assert "it raised ModuleNotFoundError while being imported" in out
    assert "No module named 'not_installed_lib_xyz'" in out


def test_a_wrong_attribute_names_the_apps_the_module_has(project: Path) -> None:
    module(project, "shop", 'from rabbittask import App\nshop = App("shop")\nVERSION = "1"\n')
    code, out = run("topology", "export", "-A", "proj.shop")
    assert code == 1
    assert out.strip() == (
        "Error: 'proj.shop' has no attribute 'app' (-A proj.shop); the App(s) in module 'proj.shop': proj.shop:shop"
    )
    code, out = run("topology", "export", "-A", "proj.shop:VERSION")
    assert out.strip() == (
        "Error: 'proj.shop:VERSION' is a str, not a rabbittask App; the App(s) in module 'proj.shop': "
        "proj.shop:shop; use -A module:attribute"
    )
    assert "NoneType" not in out


def test_an_app_spec_without_a_module_says_what_one_looks_like(project: Path) -> None:
    code, out = run("topology", "export", "-A", ":app")
    assert code == 1
    assert out.strip() == "Error: -A ':app' names no module: use -A module:attribute, e.g. -A shop.tasks:app"


def test_status_in_text_mode_says_why_it_exits_1_and_a_missing_queue_reads_missing_in_every_column(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import rabbittask.cli.status as status_cli

    async def gather(app: object, wait_s: float) -> dict[str, object]:
        return {
            "workers": [],
            "queues": [
                {"name": "emails", "exists": True, "ready": 3, "unacked": 0, "consumers": 0, "dlq_ready": 1},
                {"name": "thumbs", "exists": False, "ready": None, "unacked": None, "consumers": None}
                | {"dlq_ready": None},
            ],
        }

    monkeypatch.setattr(status_cli, "gather", gather)
    result = CliRunner().invoke(main, ["status", "-A", "examples.emails:app"], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    rows = [[c.strip() for c in line.strip("│ ").split("│")] for line in result.output.splitlines() if "│" in line]
    assert rows == [["emails", "3", "0", "0", "1"], ["thumbs", "missing", "missing", "missing", "missing"]]
    assert result.output.rstrip().endswith(
        "exit status 1: no worker consumes emails; thumbs does not exist on the broker (a worker or `rabbittask "
        "topology apply -A examples.emails:app` declares them). Start a worker: rabbittask worker -A "
        "examples.emails:app -Q emails,thumbs"
    )


def test_a_bad_worker_option_names_the_flag_its_variable_and_the_value() -> None:
    code, out = run("worker", "-A", "examples.emails:app", "-c", "0")
    assert code == 2
    assert (
        "Error: invalid worker options: -c/--concurrency (RABBITTASK_WORKER_CONCURRENCY): Input should be greater "
        "than or equal to 1 (got 0)"
    ) in out
    code, out = run("worker", "-A", "examples.emails:app", "--max-memory-per-child", "lots")
    assert (
        "--max-memory-per-child (RABBITTASK_WORKER_MAX_MEMORY_PER_CHILD_MB): 'lots' is not a memory size: use a "
        "number with an optional unit, e.g. 300MB or 1.5GB"
    ) in " ".join(out.split())


def test_a_queue_the_app_does_not_have_names_the_ones_it_has() -> None:
    code, out = run("worker", "-A", "examples.emails:app", "-Q", "emails, nope")
    assert (code, out.strip().splitlines()[-1]) == (
        1,
        "Error: app 'shop' has no task on queue(s) nope; known: emails, thumbs",
    )
