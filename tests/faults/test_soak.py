"""A 60 s smoke of `make soak` (bench/soak.py): the mixed workload under the chaos loop loses nothing.

The full soak (`make soak`, 10 minutes, 100,000 tasks by default) is not part of `make test`; this
runs the same code for one minute with a fault every 6 s and a fixed seed.
"""

from __future__ import annotations

import pytest

from bench import soak
from tests import netns

pytestmark = [pytest.mark.faults, pytest.mark.cluster, pytest.mark.timeout(420)]


def test_a_one_minute_soak_loses_nothing_and_runs_no_countdown_early(capsys: pytest.CaptureFixture[str]) -> None:
    netns.require()
    code = soak.run(minutes=1.0, tasks=2000, seed=23, every_s=6.0)
    out = capsys.readouterr().out
    print(out)
    assert code == 0, out
    assert "| lost | 0 |" in out and "unexplained 0" in out
