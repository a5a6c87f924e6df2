"""The beat service in deploy/: two replicas, and commands that are valid `rabbittask beat` invocations."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from rabbittask.cli import main

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def beat_commands() -> list[list[str]]:
    k8s = (DEPLOY / "kubernetes" / "beat-deployment.yaml").read_text()
    unit = (DEPLOY / "systemd" / "rabbittask-beat.service").read_text()
    commands = [json.loads(m) for m in re.findall(r"command: (\[.*\])", k8s)]
    commands += [shlex.split(m) for m in re.findall(r"^ExecStart=(.*)$", unit, re.M)]
    return [c[c.index("beat") :] for c in commands]


def test_kubernetes_runs_two_beat_replicas_that_a_drain_cannot_take_both_of() -> None:
    k8s = (DEPLOY / "kubernetes" / "beat-deployment.yaml").read_text()
    assert re.search(r"^kind: Deployment$", k8s, re.M) and re.search(r"^  replicas: 2$", k8s, re.M)
    assert re.search(r"^kind: PodDisruptionBudget$", k8s, re.M) and "minAvailable: 1" in k8s


@pytest.mark.parametrize("command", beat_commands(), ids=lambda c: " ".join(c))
def test_deploy_commands_are_valid_beat_invocations(command: list[str]) -> None:
    assert command[:3] == ["beat", "-A", "examples.periodic:app"]
    result = CliRunner().invoke(main, [*command, "--list"])  # parses every option; --list needs no broker
    assert result.exit_code == 0, result.output
    assert "nightly-report" in result.output
