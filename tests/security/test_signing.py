"""Message signing and the serializer allow-list, end to end through a real worker."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rabbittask import App, ConfigError
from rabbittask.message import CONTENT_TYPE, H_EXPIRES, H_SIGNATURE, Outgoing
from rabbittask.signing import sign
from tests import amqp
from tests.faults.ledger import Ledger

pytestmark = [pytest.mark.security, pytest.mark.timeout(90)]
APP = "tests.apps.ledger_app:app"
KEYS = {"k1": "first-signing-key-0123456789", "k2": "second-signing-key-9876543210"}


def ledger_app(url: str, prefix: str, **settings: Any) -> App:
    app = App("ledger", broker_url=url, **settings)

    @app.task(queue=f"{prefix}.work", name="ledger.work")
    def work(key: str, sleep_s: float = 0.0) -> str: ...

    @app.task(queue=f"{prefix}.work", name="ledger.canary")
    def canary(path: str) -> None: ...

    return app


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    (tmp_path / "ledger").mkdir()
    return Ledger(tmp_path / "ledger")


@pytest.fixture
def signed_worker(worker_factory, broker_url: str, unique_name: str, ledger: Ledger, amqp_cleanup) -> Any:
    """A worker that requires signatures by k1 or k2."""
    for q in (f"{unique_name}.work", f"{unique_name}.work.dlq"):
        amqp_cleanup.queue(q)
    env = {"RT_LEDGER_DIR": str(ledger.directory), "RABBITTASK_SIGNING_KEYS": json.dumps(KEYS)}
    w = worker_factory(APP, prefix=unique_name, env=env)
    w.wait_for_log("consuming from")
    return w


@pytest.fixture
def publisher(broker_url: str, unique_name: str) -> Iterator[App]:
    app = ledger_app(broker_url, unique_name, signing_keys=KEYS, signing_key_id="k1")
    yield app
    app.close()


def signed_raw(app: App, prefix: str, key: str, **change: Any) -> Outgoing:
    msg = Outgoing(f"{prefix}.work", json.dumps({"v": 1, "args": [key], "kwargs": {}}).encode(), key, "ledger.work")
    sign(app.settings, msg)
    for name, value in change.items():
        setattr(msg, name, value)
    return msg


def publish(url: str, msg: Outgoing) -> None:
    amqp.publish_raw(
        url, msg.routing_key, msg.body, content_type=CONTENT_TYPE, type=msg.task_name, message_id=msg.message_id,
        headers=msg.headers,
    )  # fmt: skip


def test_signed_tasks_run_and_unsigned_or_tampered_ones_are_dead_lettered_with_the_reason(
    signed_worker, publisher: App, broker_url: str, unique_name: str, ledger: Ledger
) -> None:
    work = publisher.tasks["ledger.work"]
    work.delay("signed-k1")
    work.apply_async(("signed-expiring",), expires=600)
    rotated = ledger_app(broker_url, unique_name, signing_keys=KEYS, signing_key_id="k2")
    rotated.tasks["ledger.work"].delay("signed-k2")  # key rotation: the worker knows both ids
    rotated.close()
    q = f"{unique_name}.work"
    amqp.publish_raw(
        broker_url, q, b'{"v":1,"args":["unsigned"],"kwargs":{}}', content_type=CONTENT_TYPE, type="ledger.work",
        message_id="unsigned",
    )  # fmt: skip
    publish(broker_url, signed_raw(publisher, unique_name, "tampered-body", body=b'{"v":1,"args":["evil"]}'))
    publish(broker_url, signed_raw(publisher, unique_name, "renamed", task_name="ledger.canary"))
    expiring = signed_raw(publisher, unique_name, "extended")
    expiring.headers = {**(expiring.headers or {}), H_EXPIRES: "2999-01-01T00:00:00+00:00"}  # added after signing
    publish(broker_url, expiring)
    forged = signed_raw(publisher, unique_name, "forged")
    forged.headers = {H_SIGNATURE: "k9:" + "0" * 64}
    publish(broker_url, forged)
    # not JSON at all: refused for its signature before anything tries to decode it
    amqp.publish_raw(broker_url, q, b"\x80\x04garbage", content_type=CONTENT_TYPE, type="ledger.work", message_id="raw")

    amqp.wait_depth(broker_url, f"{q}.dlq", 6, timeout_s=20)
    ledger.wait_executed({"signed-k1", "signed-k2", "signed-expiring"}, 10)
    assert set(ledger.ends()) == {"signed-k1", "signed-k2", "signed-expiring"}
    dead = {p.message_id: p.headers for p, _ in amqp.get_all(broker_url, f"{q}.dlq")}
    assert {h["rt-reason"] for h in dead.values()} == {"signature invalid"}
    assert "not signed" in dead["unsigned"]["rt-exc-message"]
    assert "not signed" in dead["raw"]["rt-exc-message"]
    for mid in ("tampered-body", "renamed", "extended"):
        assert "does not match" in dead[mid]["rt-exc-message"], dead[mid]
    assert "key id 'k9'" in dead["forged"]["rt-exc-message"]
    log = signed_worker.log()
    assert "Traceback" not in log and not any(k in log for k in KEYS.values())


def test_a_signing_key_id_that_is_not_among_the_keys_is_refused_at_once() -> None:
    with pytest.raises(ConfigError, match="signing_key_id 'k3' is not in signing_keys"):
        App("x", signing_keys=KEYS, signing_key_id="k3")


def test_signing_keys_never_show_in_repr() -> None:
    app = App("x", signing_keys=KEYS, signing_key_id="k1")
    assert not any(k in repr(app.settings) for k in KEYS.values())


def test_a_pickled_message_is_refused_by_content_type_and_never_unpickled(
    worker_factory, broker_url: str, unique_name: str, ledger: Ledger, tmp_path: Path, amqp_cleanup
) -> None:
    q = amqp_cleanup.queue(f"{unique_name}.work")
    amqp_cleanup.queue(f"{q}.dlq")
    w = worker_factory(APP, prefix=unique_name, env={"RT_LEDGER_DIR": str(ledger.directory)})
    w.wait_for_log("consuming from")
    canary = tmp_path / "unpickled"
    # Unpickling this body would create the canary file (os.system runs on load).
    body = pickle.dumps(_Exploit(f"touch {canary}"))
    for ct, mid in (("application/x-python-serialize", "pickle-ct"), (CONTENT_TYPE, "pickle-as-json")):
        amqp.publish_raw(broker_url, q, body, content_type=ct, type="ledger.work", message_id=mid)
    app = ledger_app(broker_url, unique_name)
    app.tasks["ledger.work"].delay("after")
    app.close()
    ledger.wait_executed({"after"}, 15)
    amqp.wait_depth(broker_url, f"{q}.dlq", 2)
    dead = {p.message_id: p.headers for p, _ in amqp.get_all(broker_url, f"{q}.dlq")}
    assert dead["pickle-ct"]["rt-reason"] == "malformed message"
    assert "content type 'application/x-python-serialize' is not accepted" in dead["pickle-ct"]["rt-exc-message"]
    assert "not valid JSON" in dead["pickle-as-json"]["rt-exc-message"]
    assert not canary.exists()


class _Exploit:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))
