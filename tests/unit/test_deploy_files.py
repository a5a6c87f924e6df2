"""deploy/ parses and validates, and every command in it is a valid invocation of what it runs.

No Docker engine or Kubernetes cluster here: compose is checked against the compose-spec schema,
manifests against the Kubernetes schemas (kubernetes-validate) and KEDA objects by their fields.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import click
import jsonschema
import kubernetes_validate
import pytest
import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

from examples import producer
from rabbittask.cli import main
from rabbittask.cli.common import load_app
from rabbittask.ops.admin.formats import render
from rabbittask.worker.metrics import HEALTHZ_PATH, METRICS_PATH, READYZ_PATH

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.30.0"


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifests() -> Iterator[dict[str, Any]]:
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        yield from documents(path)


def manifest(kind: str, name: str) -> dict[str, Any]:
    return next(m for m in manifests() if m["kind"] == kind and m["metadata"]["name"] == name)


def compose() -> dict[str, Any]:
    doc = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert isinstance(doc, dict)
    return doc


def rabbittask_command(argv: list[str]) -> click.Context:
    """Parse `rabbittask ...` exactly as the CLI would, without running it; fail on a bad option or app."""
    assert Path(argv[0]).name == "rabbittask", argv
    command: click.Command = main
    args = argv[1:]
    name = "rabbittask"
    parent = None
    while isinstance(command, click.Group):
        parent = click.Context(command, info_name=name, parent=parent)
        name, args = args[0], args[1:]
        sub = command.get_command(parent, name)
        assert sub is not None, f"no command {name!r} in {argv}"
        command = sub
    ctx = command.make_context(name, list(args), parent=parent)  # raises click.UsageError on bad options
    load_app(ctx.params["app_spec"])
    return ctx


def commands() -> Iterator[tuple[str, list[str]]]:
    """Every command line in deploy/: compose services, Kubernetes containers, systemd Exec*, the Dockerfile CMD."""
    for name, service in compose()["services"].items():
        argv = []
        for key in ("entrypoint", "command"):
            part = service.get(key) or []
            argv += part if isinstance(part, list) else shlex.split(part)
        if argv:
            yield f"compose {name}", argv
    for m in manifests():
        spec = m.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []):
            yield f"{m['kind']} {c['name']}", [*c.get("command", []), *c.get("args", [])]
    for line in (DEPLOY / "systemd" / "rabbittask-worker.service").read_text().splitlines():
        if line.startswith(("ExecStart=", "ExecStartPre=")):
            yield "systemd", shlex.split(line.split("=", 1)[1])
    cmd = re.search(r"^CMD (\[.*\])$", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE)
    assert cmd is not None
    yield "Dockerfile", json.loads(cmd.group(1))


def option(argv: list[str], flag: str) -> float:
    return float(argv[argv.index(flag) + 1])


def test_yaml_files_pass_yamllint() -> None:
    config = YamlLintConfig(file=str(DEPLOY / ".yamllint.yaml"))
    problems = [
        f"{path.relative_to(ROOT)}:{p.line}: {p.message}"
        for path in sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
        for p in linter.run(path.read_text(), config)
    ]
    assert problems == []


def test_docker_compose_file_is_valid_against_the_compose_spec() -> None:
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    jsonschema.validate(compose(), json.loads(schema_file.read_text()))
    services = compose()["services"]
    assert {"rabbit1", "rabbit2", "rabbit3", "topology", "worker", "producer"} <= set(services)
    assert services["worker"]["depends_on"]["topology"]["condition"] == "service_completed_successfully"


def test_kubernetes_manifests_are_valid_against_the_kubernetes_schemas() -> None:
    for m in manifests():
        if m["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: checked field by field below
        kubernetes_validate.validate(m, K8S_VERSION, strict=True)


def test_keda_scales_the_worker_deployment_on_the_app_queues() -> None:
    app = load_app("examples.emails:app")
    scaled = manifest("ScaledObject", "rabbittask-worker")
    deployment = manifest("Deployment", "rabbittask-worker")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    triggers = scaled["spec"]["triggers"]
    assert {t["metadata"]["queueName"] for t in triggers} == set(app.queues)
    for t in triggers:
        assert t["type"] == "rabbitmq" and t["metadata"]["mode"] == "QueueLength"
        assert int(t["metadata"]["value"]) > 0
        auth = manifest("TriggerAuthentication", t["authenticationRef"]["name"])
        for ref in auth["spec"]["secretTargetRef"]:
            secret = manifest("Secret", ref["name"])
            assert ref["key"] in secret["stringData"]


def test_pod_disruption_budget_selects_the_worker_pods() -> None:
    pdb = manifest("PodDisruptionBudget", "rabbittask-worker")
    labels = manifest("Deployment", "rabbittask-worker")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize(("where", "argv"), list(commands()), ids=lambda v: v if isinstance(v, str) else "")
def test_commands_in_deploy_files_are_valid_invocations(where: str, argv: list[str]) -> None:
    if Path(argv[0]).name == "rabbittask":
        rabbittask_command(argv)
    elif argv[:3] == ["python", "-m", "examples.producer"]:
        producer.parse_args(argv[3:])
    else:
        assert argv[:2] == ["sh", "-c"] and "rabbitmqadmin" in argv[2], f"{where}: unexpected command {argv}"
        assert "import /definitions" in argv[2]


def test_stop_grace_periods_cover_the_worker_shutdown_timeout() -> None:
    # Kubernetes: the grace period is --shutdown-timeout plus 15 s to close connections
    pod = manifest("Deployment", "rabbittask-worker")["spec"]["template"]["spec"]
    argv = pod["containers"][0]["command"]
    assert pod["terminationGracePeriodSeconds"] == option(argv, "--shutdown-timeout") + 15
    # docker compose
    worker = compose()["services"]["worker"]
    assert float(worker["stop_grace_period"].removesuffix("s")) > option(worker["command"], "--shutdown-timeout")
    # systemd
    unit = (DEPLOY / "systemd" / "rabbittask-worker.service").read_text()
    exec_start = shlex.split(re.search(r"^ExecStart=(.*)$", unit, re.MULTILINE).group(1))  # type: ignore[union-attr]
    timeout_stop = float(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.MULTILINE).group(1))  # type: ignore[union-attr]
    assert timeout_stop == option(exec_start, "--shutdown-timeout") + 15


def test_worker_probes_and_scrape_use_the_metrics_port_and_the_paths_the_worker_serves() -> None:
    template = manifest("Deployment", "rabbittask-worker")["spec"]["template"]
    [container] = template["spec"]["containers"]
    port = option(container["command"], "--metrics-port")
    [named] = [p for p in container["ports"] if p["name"] == "metrics"]
    assert named["containerPort"] == port
    assert container["livenessProbe"]["httpGet"] == {"path": HEALTHZ_PATH, "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": READYZ_PATH, "port": "metrics"}
    annotations = template["metadata"]["annotations"]
    assert (annotations["prometheus.io/port"], annotations["prometheus.io/path"]) == (str(int(port)), METRICS_PATH)


def test_exported_definitions_in_deploy_are_current() -> None:
    app = load_app("examples.emails:app")
    export = render(app.declarations(), "definitions")
    assert (DEPLOY / "definitions.json").read_text() == export
    assert manifest("ConfigMap", "rabbittask-definitions")["data"]["definitions.json"] == export
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "render-deploy.py"), "--check"], capture_output=True)
    assert check.returncode == 0, check.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit_verifies_cleanly(tmp_path: Path) -> None:
    # verify needs the executables to exist: point them at /bin/true in a copy
    unit = (DEPLOY / "systemd" / "rabbittask-worker.service").read_text()
    copy = tmp_path / "rabbittask-worker.service"
    copy.write_text(unit.replace("/opt/rabbittask/venv/bin/rabbittask", "/bin/true"))
    done = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_local_cluster_script_is_valid_bash() -> None:
    script = DEPLOY / "local-cluster.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    if shutil.which("shellcheck"):
        done = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout
    usage = subprocess.run([str(script)], capture_output=True, text=True)
    assert usage.returncode == 2 and "local-cluster.sh start" in usage.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["rabbittask", "worker", "-A", "examples.emails:app", "--no-such-flag"],
        ["rabbittask", "worker", "-A", "examples.emails:app", "--shutdown-timeout", "soon"],
        ["rabbittask", "topology", "export", "-A", "examples.emails:app", "--format", "toml"],
        ["rabbittask", "worker", "-A", "examples.nowhere:app"],
        ["rabbittask", "topology", "aply", "-A", "examples.emails:app"],
    ],
)
def test_the_invocation_check_catches_a_bad_command(argv: list[str]) -> None:
    with pytest.raises((click.ClickException, AssertionError)):
        rabbittask_command(argv)
