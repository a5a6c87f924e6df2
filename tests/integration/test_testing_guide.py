"""The testing guide's samples run as a user's tests would: pytest in a fresh process, the plugin from its entry point.

docs/testing.md shows excerpts of docs/samples/testing/; the excerpts must be in the files, and the
files must pass, with the broker the environment names and, without one, with a throwaway node.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rabbittask.testing import NodeError, rabbitmq_bin_dir
from tests.workers import ROOT

SAMPLES = ROOT / "docs" / "samples" / "testing"
GUIDE = ROOT / "docs" / "testing.md"


def run_pytest(*args: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]
    env = {k: v for k, v in env.items() if not k.startswith("PYTEST_")}  # not a worker of this run's xdist
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def test_every_code_block_of_the_guide_is_taken_from_a_sample_file() -> None:
    blocks = re.findall(r"```python\n# (docs/samples/testing/\S+)\n(.*?)```", GUIDE.read_text(), re.DOTALL)
    assert len(blocks) >= 5
    for path, code in blocks:
        assert code in (ROOT / path).read_text(), f"docs/testing.md shows code that is not in {path}:\n{code}"


def test_the_samples_pass_with_the_broker_the_environment_names(broker_url: str) -> None:
    env = {**os.environ, "RABBITTASK_TEST_BROKER_URL": broker_url}
    done = run_pytest(str(SAMPLES), "-q", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "7 passed" in done.stdout
    assert "rabbittask: tests used RABBITTASK_TEST_BROKER_URL" in done.stdout


@pytest.mark.slow
def test_without_a_broker_url_or_docker_the_plugin_starts_a_throwaway_node_and_says_so() -> None:
    try:
        rabbitmq_bin_dir()
    except NodeError as e:
        pytest.skip(str(e))
    env = {k: v for k, v in os.environ.items() if k != "RABBITTASK_TEST_BROKER_URL"}
    env["DOCKER_HOST"] = "tcp://127.0.0.1:1"  # no engine answers there
    done = run_pytest(str(SAMPLES / "test_shop.py"), "-q", "-k", "real_worker", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
    assert "rabbittask: tests used a throwaway rabbitmq-server node" in done.stdout
    assert "no Docker engine answers" in done.stdout


def test_a_project_that_names_no_app_is_told_how(tmp_path: Path) -> None:
    (tmp_path / "test_x.py").write_text("def test_x(rabbittask_stub):\n    pass\n")
    done = run_pytest("-q", str(tmp_path / "test_x.py"), "--rootdir", str(tmp_path), env=dict(os.environ), cwd=tmp_path)
    assert done.returncode != 0
    assert "define a fixture `rabbittask_app`" in done.stdout + done.stderr


def test_the_app_may_be_named_in_the_ini_file(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\nrabbittask_app = shop:app\n")
    (tmp_path / "test_y.py").write_text(
        "import shop\n\n"
        "def test_y(rabbittask_eager):\n"
        "    assert shop.send_receipt.delay(1, 'a@b.c').get() == 'receipt for order 1 sent to a@b.c'\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SAMPLES), str(ROOT)])}
    done = run_pytest("-q", "test_y.py", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
