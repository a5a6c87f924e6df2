"""The samples of docs/testing.md: the tiny shop tested at each of the three levels."""

from __future__ import annotations

import time

import pytest
import shop

from rabbittask import App, TaskError
from rabbittask.testing import Eager, StubBroker, WorkerFactory

# -- Level 1: eager mode. Each task runs as it is sent, in this process. ---------------------------


def test_a_charge_returns_its_result(rabbittask_eager: Eager) -> None:
    handle = shop.charge.delay(42, 1999, "ada@example.com")
    assert handle.get() == {"order": 42, "cents": 1999, "attempt": 1}
    assert shop.gateway.charged[-1] == (42, 1999)


def test_a_declined_card_fails_like_a_remote_failure(rabbittask_eager: Eager) -> None:
    with pytest.raises(TaskError) as failure:
        shop.charge.delay(42, 0, "ada@example.com").get()
    assert failure.value.type_name == "PaymentDeclined" and failure.value.reason == "task raised"
    (dead,) = rabbittask_eager.dead_letters("shop.payments")
    assert dead.reason == "task raised" and dead.args == [42, 0, "ada@example.com"]


def test_a_gateway_outage_is_retried(rabbittask_eager: Eager, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shop.gateway, "failures", 2)
    assert shop.charge.delay(7, 500, "bob@example.com").get()["attempt"] == 3  # back-off not slept


# -- Level 2: the stub broker. Messages wait in queues until you run them. --------------------------


def test_a_charge_queues_its_receipt(rabbittask_stub: StubBroker) -> None:
    shop.charge.delay(7, 500, "bob@example.com")
    rabbittask_stub.run_until_idle(queues=["shop.payments"])  # a worker on the payments queue only
    (receipt,) = rabbittask_stub.queue("shop.emails")
    assert receipt.task_name == "shop.send_receipt" and receipt.args == [7, "bob@example.com"]


def test_a_retry_waits_for_its_back_off(rabbittask_stub: StubBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shop.gateway, "failures", 1)
    handle = shop.charge.delay(7, 500, "bob@example.com")
    rabbittask_stub.run_until_idle()
    [(due, retry)] = rabbittask_stub.scheduled("shop.payments")
    assert retry.attempt == 2 and due - rabbittask_stub.now() >= 1.0  # back-off 2 s, jitter at most halves it
    rabbittask_stub.advance(2)
    rabbittask_stub.run_until_idle()
    assert handle.get(timeout=0)["attempt"] == 2


def test_a_reminder_an_hour_later_takes_no_wall_time(rabbittask_stub: StubBroker) -> None:
    started = time.monotonic()
    handle = shop.remind.apply_async((7,), countdown=3600)
    assert rabbittask_stub.run_until_idle() == 0  # not due
    rabbittask_stub.advance(3600)
    assert rabbittask_stub.run_until_idle() == 1
    assert handle.get(timeout=0) == "reminder for order 7"
    assert time.monotonic() - started < 1.0


# -- Level 3: a real broker and a real worker process. ----------------------------------------------


def test_a_real_worker_charges_the_order(rabbittask_live_app: App, rabbittask_worker: WorkerFactory) -> None:
    rabbittask_worker(rabbittask_live_app, queues=["shop.payments", "shop.emails"])
    assert shop.charge.call(9, 100, "eve@example.com", timeout=10) == {"order": 9, "cents": 100, "attempt": 1}
