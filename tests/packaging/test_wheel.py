"""The package a user installs: `make dist`'s wheel and sdist, installed in a clean virtualenv.

The wheel is built once per session (from the sdist, as `python -m build` does) and installed with
only its runtime dependencies into a virtualenv of its own. The dependencies come from a wheel cache
(`~/.cache/rabbittask-test-wheels`, filled from the package index the first time), so later runs
install offline. Commands run from an empty directory with no path to this repository.
"""

from __future__ import annotations

import fcntl
import os
import re
import runpy
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vhosts import own_vhost
from tests.workers import ROOT

WHEEL_CACHE = Path(os.environ.get("RABBITTASK_TEST_WHEELS", Path.home() / ".cache" / "rabbittask-test-wheels"))
# Written once, in rabbittask/version.py; pyproject.toml's version is read from it
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
assert PYPROJECT["project"]["dynamic"] == ["version"]
assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "rabbittask.version.__version__"}
VERSION = runpy.run_path(str(ROOT / "rabbittask" / "version.py"))["__version__"]
STATIC = ["dashboard.css", "dashboard.js", "uPlot.iife.min.js", "uPlot.min.css", "uPlot.LICENSE"]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any path into this repository or its virtualenv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if str(ROOT) not in p)
    return {**env, **extra}


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(wheel, sdist, build output): built once per session, without build isolation (offline)."""
    out = tmp_path_factory.mktemp("dist")
    # One build at a time in this tree (another pytest process, `make dist`): they share build/ and egg-info.
    with open(Path(tempfile.gettempdir()) / "rabbittask-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = subprocess.run(
            [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
            capture_output=True,
            text=True,
            timeout=240,
        )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = out.glob("rabbittask-*.whl")
    (sdist,) = out.glob("rabbittask-*.tar.gz")
    return wheel, sdist, built.stdout + built.stderr


@pytest.fixture(scope="session")
def installed(dist: tuple[Path, Path, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean virtualenv with the wheel and its runtime dependencies only; its bin/ directory."""
    wheel = dist[0]
    env_dir = tmp_path_factory.mktemp("clean") / "venv"
    venv.create(env_dir, with_pip=True)
    pip = [str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    offline = [*pip, "--no-index", "--find-links", str(WHEEL_CACHE), str(wheel)]
    done = subprocess.run(offline, capture_output=True, text=True, timeout=300, env=clean_env())
    if done.returncode != 0:  # the first run on this machine, or a new dependency: fill the cache once
        WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
        fetch = [sys.executable, "-m", "pip", "download", "-q", "--dest", str(WHEEL_CACHE), str(wheel)]
        fetched = subprocess.run(fetch, capture_output=True, text=True, timeout=600)
        assert fetched.returncode == 0, fetched.stdout + fetched.stderr
        done = subprocess.run(offline, capture_output=True, text=True, timeout=300, env=clean_env())
    assert done.returncode == 0, done.stdout + done.stderr
    return env_dir / "bin"


def test_the_build_gives_no_deprecation_warning(dist: tuple[Path, Path, str]) -> None:
    output = dist[2]
    assert "Successfully built" in output
    assert not re.search(r"deprecat|BuildBackendWarning", output, re.IGNORECASE), output


def test_the_wheel_holds_the_package_its_types_and_the_dashboard_files_and_nothing_else(
    dist: tuple[Path, Path, str],
) -> None:
    names = zipfile.ZipFile(dist[0]).namelist()
    assert "rabbittask/__init__.py" in names and "rabbittask/py.typed" in names
    assert "rabbittask/contrib/django.py" in names
    assert "rabbittask/dashboard/page.html" in names
    assert all(f"rabbittask/dashboard/static/{name}" in names for name in STATIC)
    assert [n for n in names if n.startswith(("tests/", "examples/", "docs/", "bench/"))] == []
    assert [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".pyo")) or "egg-info" in n] == []
    top = {n.split("/")[0] for n in names}
    assert top == {"rabbittask", f"rabbittask-{VERSION}.dist-info"}


def test_the_metadata_has_an_spdx_license_classifiers_urls_and_the_documented_extras(
    dist: tuple[Path, Path, str],
) -> None:
    with zipfile.ZipFile(dist[0]) as whl:
        meta = whl.read(f"rabbittask-{VERSION}.dist-info/METADATA").decode()
        assert f"rabbittask-{VERSION}.dist-info/licenses/LICENSE" in whl.namelist()
    assert "License-Expression: MIT" in meta
    assert "Classifier: Typing :: Typed" in meta and "Classifier: Programming Language :: Python :: 3.11" in meta
    assert re.search(r"^Project-URL: Documentation, https://", meta, re.MULTILINE)
    extras = set(re.findall(r"^Provides-Extra: (\S+)", meta, re.MULTILINE))
    assert {"redis", "dashboard", "otel", "testing"} <= extras
    readme = (ROOT / "README.md").read_text()
    assert all(f"| `{extra}` |" in readme for extra in extras)  # every extra is explained to users


def test_the_sdist_builds_the_same_package_without_caches(dist: tuple[Path, Path, str]) -> None:
    with tarfile.open(dist[1]) as sdist:
        names = sdist.getnames()
    root = f"rabbittask-{VERSION}"
    assert f"{root}/rabbittask/py.typed" in names and f"{root}/LICENSE" in names
    assert f"{root}/CHANGELOG.md" in names and not [n for n in names if n.startswith(f"{root}/tests")]
    assert [n for n in names if "__pycache__" in n or n.endswith(".pyc") or "/.venv" in n] == []


def test_the_installed_wheel_reports_its_version_from_outside_the_source_tree(installed: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [str(installed / "rabbittask"), "--version"], cwd=tmp_path, env=clean_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"rabbittask, version {VERSION}"
    where = subprocess.run(
        [str(installed / "python"), "-c", "import rabbittask; print(rabbittask.__version__, rabbittask.__file__)"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert where[0] == VERSION
    assert str(installed.parent) in where[1] and str(ROOT) not in where[1]
    # only the runtime dependencies: no test tooling, no extras
    listed = subprocess.run(
        [str(installed / "python"), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, check=True
    ).stdout.lower()
    for absent in ("pytest", "redis==", "starlette", "django", "mypy"):
        assert absent not in listed


@pytest.fixture
def demo_dir(tmp_path: Path) -> Iterator[Path]:
    """The demo's files (examples/), copied where no rabbittask source is beside them."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("__pycache__", "django"))
    yield tmp_path


@pytest.mark.timeout(300)
def test_the_demo_runs_on_the_installed_wheel(installed: Path, demo_dir: Path, broker_url: str) -> None:
    with own_vhost(broker_url, "rt-wheel-demo") as url:
        done = subprocess.run(
            [str(installed / "python"), "-m", "examples.demo"],
            cwd=demo_dir,
            env=clean_env(RABBITTASK_BROKER_URL=url or broker_url),
            capture_output=True,
            text=True,
            timeout=240,
        )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "send_email.call(...)             -> \"sent 'hi' to bob@example.com\"" in out
    assert "charge.call(42)                  -> 'order 42 charged on attempt 2'" in out
    assert "worker stopped with exit code 0" in out
    assert str(ROOT) not in out  # no traceback or path from the source tree
