"""`make demo` runs `python -m examples.demo`: it must exit 0 and print the results."""

from __future__ import annotations

import subprocess
import sys

from tests.workers import ROOT, worker_env


def test_the_demo_runs_end_to_end_and_prints_the_results(broker_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "examples.demo"],
        cwd=ROOT,
        env=worker_env(broker_url),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "send_email.call(...)           -> \"sent 'hi' to bob@example.com\"" in out
    assert "3 x thumbnail.acall(i, 64)     -> [{'image_id': 0, 'size': 64}" in out
    assert "app.batch(): 100 x send_email  -> all confirmed" in out
    assert "ArgumentsInvalid: invalid arguments for task 'examples.emails.send_email'" in out
    assert "worker stopped with exit code 0" in out
