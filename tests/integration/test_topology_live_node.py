"""Export -> `rabbitmqctl import_definitions` -> worker, and `topology diff` through the management API.

All on one throwaway node with the management plugin (never the shared broker: imports and
deletes here touch fixed names such as `emails`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rabbittask.testing import RabbitNode
from tests import amqp
from tests.workers import ROOT, WorkerFactory, worker_env

APP = "examples.emails:app"


@pytest.fixture(scope="module")
def node() -> Iterator[RabbitNode]:
    with RabbitNode(plugins=["rabbitmq_management"]) as node:
        yield node


@pytest.fixture(scope="module")
def management_url(node: RabbitNode) -> str:
    return f"http://guest:guest@127.0.0.1:{node.management_port}/"


def export(fmt: str = "definitions", hash_seed: str = "0") -> str:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "rabbittask", "topology", "export", "-A", APP, "--format", fmt],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def rabbittask(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rabbittask", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def cli(node: RabbitNode, *args: str) -> tuple[int, str]:
    """`rabbittask topology ... -A examples.emails:app` against `node`, in a process of its own.

    Not in this process: examples.emails reads RABBITTASK_BROKER_URL when it is first imported, which
    may have happened already (e.g. at collection) with another broker, such as the shared one.
    """
    done = rabbittask(worker_env(node.url), "topology", *args, "-A", APP)
    return done.returncode, done.stdout + done.stderr


def diff(node: RabbitNode, *args: str) -> tuple[int, str]:
    return cli(node, "diff", *args)


def apply(node: RabbitNode) -> tuple[int, str]:
    return cli(node, "apply")


def test_export_is_byte_identical_across_processes() -> None:
    for fmt in ("definitions", "yaml", "markdown"):
        assert export(fmt, hash_seed="1") == export(fmt, hash_seed="2")


def test_exported_definitions_import_into_a_fresh_node_and_a_worker_starts_without_conflict(
    node: RabbitNode, tmp_path: Path, worker_factory: WorkerFactory
) -> None:
    # Given the definitions ops would commit, imported without running any Python on the broker host
    path = tmp_path / "definitions.json"
    path.write_text(export())
    node.ctl("import_definitions", str(path))
    assert amqp.depth(node.url, "emails") == 0

    # When a worker of the app starts against that broker, it declares the same topology
    worker = worker_factory(APP, broker_url=node.url)
    worker.wait_for_log("consuming from emails, thumbs")

    # Then there was no declaration conflict
    assert "exists with other arguments" not in worker.log()
    assert worker.stop() == 0


def test_diff_exits_0_when_the_broker_has_what_the_code_declares(node: RabbitNode, management_url: str) -> None:
    code, out = apply(node)
    assert code == 0, out
    assert "= queue 'rabbittask.delay.3355443200': exists as declared" in out
    code, out = diff(node, "--management-url", management_url)
    assert code == 0, out
    assert "no differences" in out
    assert "guest:guest" not in out


def test_diff_compares_the_delay_ladder_and_its_exchange_to_exchange_bindings(
    node: RabbitNode, management_url: str
) -> None:
    assert apply(node)[0] == 0
    connection = amqp.connect(node.url)
    channel = connection.channel()
    # a level that no longer passes messages on, a binding added by hand, a level the code does not have
    channel.exchange_unbind("rabbittask.delay.200", "rabbittask.delay.400", "*.*.0.#")
    channel.exchange_bind("rabbittask", "rabbittask.delay.100", "#")
    channel.exchange_declare("rabbittask.delay.6710886400", "topic", durable=True)
    channel.queue_declare("rabbittask.delay.6710886400", durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_bind("rabbittask.delay.6710886400", "rabbittask.delay.6710886400", "*.1.#")
    try:
        code, out = diff(node, "--management-url", management_url)

        assert code == 1, out
        assert (
            "- binding 'rabbittask.delay.400' -> exchange 'rabbittask.delay.200' (key '*.*.0.#'): missing on the broker"
            in out
        )
        assert (
            "+ binding 'rabbittask.delay.100' -> exchange 'rabbittask' (key '#'): on the broker, not in the code" in out
        )
        assert "+ exchange 'rabbittask.delay.6710886400': on the broker, not in the code" in out
        assert "+ queue 'rabbittask.delay.6710886400': on the broker, not in the code" in out
        assert "+ binding 'rabbittask.delay.6710886400' -> queue 'rabbittask.delay.6710886400' (key '*.1.#')" in out
        assert len([line for line in out.splitlines() if line.startswith("  ")]) == 5, out  # nothing else differs

        # apply restores the missing binding (bindings are idempotent); extra objects stay for ops to remove
        assert apply(node)[0] == 0
        out = diff(node, "--management-url", management_url)[1]
        assert "- binding" not in out and "+ exchange 'rabbittask.delay.6710886400'" in out
    finally:
        channel.exchange_unbind("rabbittask", "rabbittask.delay.100", "#")
        channel.queue_delete("rabbittask.delay.6710886400")
        channel.exchange_delete("rabbittask.delay.6710886400")
        connection.close()
    assert diff(node, "--management-url", management_url)[0] == 0


def test_apply_lists_every_difference_of_a_ladder_queue_and_the_ladder_ways_out(node: RabbitNode) -> None:
    assert apply(node)[0] == 0
    connection = amqp.connect(node.url)
    channel = connection.channel()
    channel.queue_delete("rabbittask.delay.800")
    channel.queue_declare(
        "rabbittask.delay.800", durable=True, arguments={"x-queue-type": "quorum", "x-message-ttl": 1000}
    )
    try:
        code, out = apply(node)
        assert code == 1, out
        assert "~ queue 'rabbittask.delay.800':" in out
        assert "x-message-ttl is 1000 on the broker, the code declares 800" in out
        assert 'x-dead-letter-exchange is not set on the broker, the code declares "rabbittask.delay.400"' in out
        assert "fixed by the ladder's layout" in out
        assert "nothing was changed" in out
    finally:
        channel.queue_delete("rabbittask.delay.800")
        connection.close()
    assert apply(node)[0] == 0


def test_diff_exits_1_and_lists_changed_missing_and_extra_objects(node: RabbitNode, management_url: str) -> None:
    assert apply(node)[0] == 0
    connection = amqp.connect(node.url)
    channel = connection.channel()
    # a queue recreated by hand with another delivery limit, a binding gone, a queue left by a removed task
    channel.queue_delete("thumbs")
    channel.queue_declare(
        "thumbs",
        durable=True,
        arguments={"x-queue-type": "quorum", "x-delivery-limit": 3, "x-dead-letter-exchange": "rabbittask.dlx"},
    )
    channel.queue_declare("old-task", durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_bind("old-task", "rabbittask", "old-task")
    channel.queue_unbind("emails.dlq", "rabbittask.dlx", "emails")
    connection.close()
    node.ctl("set_policy", "--apply-to", "queues", "limit", "^emails$", '{"max-length": 1000}')

    code, out = diff(node, "--management-url", management_url)

    assert code == 1, out
    assert "~ queue 'thumbs': x-delivery-limit is 3 on the broker, the code declares 20" in out
    assert "~ queue 'thumbs': x-dead-letter-routing-key is not set on the broker, the code declares \"thumbs\"" in out
    assert "- binding 'rabbittask' -> queue 'thumbs' (key 'thumbs'): missing on the broker" in out
    assert "- binding 'rabbittask.dlx' -> queue 'emails.dlq' (key 'emails'): missing on the broker" in out
    assert "+ binding 'rabbittask' -> queue 'old-task' (key 'old-task'): on the broker, not in the code" in out
    assert "+ queue 'old-task': on the broker, not in the code" in out
    assert "note: policy 'limit' ({\"max-length\": 1000}) applies to queue 'emails'" in out

    code, out = diff(node, "--management-url", management_url, "--ignore-extra")
    assert code == 1 and "old-task" not in out

    code, out = diff(node)  # passive declares: everything exists, the rest is not compared
    assert code == 0, out
    assert "not compared without --management-url" in out


def test_diff_refused_login_is_exit_2_and_masks_the_password(node: RabbitNode) -> None:
    code, out = diff(node, "--management-url", f"http://guest:wrong-pw@127.0.0.1:{node.management_port}/")
    assert code == 2, out
    assert "refused the login of user 'guest'" in out
    assert "wrong-pw" not in out


def least_privilege_commands() -> list[list[str]]:
    """The `rabbitmqctl` calls of docs/operations.md, "Least-privilege users", with their shell quoting undone."""
    section = (ROOT / "docs" / "operations.md").read_text().split("## Least-privilege users", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    # bash expands $APP and ${APP%...} exactly as an operator's shell would; the stub prints each call
    stub = "rabbitmqctl() { printf '%s\\0' \"$@\"; printf '\\n'; }\n"
    out = subprocess.run(["bash", "-c", stub + block], capture_output=True, text=True, check=True).stdout
    return [line.split("\0")[:-1] for line in out.splitlines()]


def test_the_documented_least_privilege_users_can_apply_publish_delays_consume_and_diff(
    node: RabbitNode, management_url: str, worker_factory: WorkerFactory
) -> None:
    # Given the users and permissions docs/operations.md tells ops to create (all passwords '...')
    for argv in least_privilege_commands():
        node.ctl(*argv)
    node.ctl("set_permissions", "-p", "shop", "guest", "^$", "^$", ".*")  # the test's own eyes: queue depths
    url = node.url.replace("guest:guest", "{user}:...") + "shop"
    try:
        # The deploy user applies the whole topology, delay ladder and exchange-to-exchange bindings included
        deploy = worker_env(url.format(user="shop-deploy"))
        done = rabbittask(deploy, "topology", "apply", "-A", APP)
        assert done.returncode == 0, done.stdout + done.stderr

        # The CI user compares it, read-only through the management API
        ci = management_url.replace("guest:guest", "shop-ci:...")
        done = rabbittask(deploy, "topology", "diff", "-A", APP, "--management-url", ci)
        assert done.returncode == 0, done.stdout + done.stderr

        # The web user publishes a delayed task: it passes the ladder's levels into the task queue
        web = worker_env(url.format(user="shop-web"))
        later = "from examples.emails import send_email; send_email.apply_async(('a@b.c', 'later'), countdown=0.7)"
        subprocess.run([sys.executable, "-c", later], env=web, cwd=ROOT, check=True, timeout=60)
        amqp.wait_depth(node.url + "shop", "emails", 1)

        # The worker user consumes it and replies to a call of the web user
        worker = worker_factory(APP, broker_url=url.format(user="shop-worker"))
        worker.wait_for_log("consuming from emails, thumbs")
        call = "from examples.emails import send_email; print(send_email.call('a@b.c', 'now', timeout=30))"
        done = subprocess.run(
            [sys.executable, "-c", call], env=web, cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert done.stdout.strip() == "sent 'now' to a@b.c", done.stderr
        amqp.wait_depth(node.url + "shop", "emails", 0)
        assert "ACCESS_REFUSED" not in worker.log()
        assert worker.stop() == 0
    finally:
        node.ctl("delete_vhost", "shop")
