"""deploy/local-cluster.sh: a 3-node cluster on this host, where a quorum task queue has a member per node."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from rabbittask import App
from rabbittask.testing import free_port
from rabbittask.testing.probes import _can_bind
from tests.workers import ROOT

SCRIPT = ROOT / "deploy" / "local-cluster.sh"


def _base_port() -> int:
    """A base port whose node ports (base+1..3) and distribution ports (base+101..103) are all free."""
    for _ in range(50):
        base = free_port() // 10 * 10
        if base + 210 < 32000 and all(_can_bind(base + k + i) for i in (1, 2, 3) for k in (0, 100)):
            return base
    raise AssertionError("no free port range for a local cluster")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    directory, base = tmp_path / "cluster", _base_port()
    try:
        subprocess.run(
            [str(SCRIPT), "start", "--dir", str(directory), "--base-port", str(base)],
            check=True,
            capture_output=True,
            text=True,
            timeout=100,
        )
        yield directory, base
    finally:
        if (directory / "cluster.conf").exists():
            subprocess.run([str(SCRIPT), "stop", "--dir", str(directory)], capture_output=True, timeout=60)


@pytest.mark.slow
def test_local_cluster_forms_three_nodes_and_a_quorum_task_queue_has_a_member_on_each(
    cluster: tuple[Path, int], unique_name: str
) -> None:
    directory, base = cluster
    env = dict(line.split("=", 1) for line in (directory / "cluster.env").read_text().split())
    assert env["RABBITTASK_BROKER_URL"] == f"amqp://guest:guest@127.0.0.1:{base + 1}/"

    # Given an app whose task queue is quorum (the default), declared through node 2
    app = App("cluster", broker_url=env["RABBITTASK_BROKER_URL_2"], exchange=unique_name)

    @app.task(queue=unique_name, name="cluster.noop")
    def noop() -> None: ...

    app.declare()
    app.close()

    # Then the queue has a member on each of the three nodes
    out = subprocess.run(
        [str(SCRIPT), "ctl", "1", "--dir", str(directory), "--", "list_queues", "name", "type", "members"]
        + ["--formatter", "json"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    queues = {q["name"]: q for q in json.loads(out)}
    assert queues[unique_name]["type"] == "quorum"
    assert sorted(queues[unique_name]["members"]) == [f"rtc{base}-{i}@localhost" for i in (1, 2, 3)]
