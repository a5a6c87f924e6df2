"""StubBroker: the app's broker in memory, run by the worker's own stages on a virtual clock."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from rabbittask import App, PublishNotConfirmed, Reject, TaskError
from rabbittask.message import H_DELIVERY_COUNT, Outgoing, encode_body, new_id
from rabbittask.testing import StubBroker
from rabbittask.worker import redelivery, settle
from tests.apps.kit_app import make_app

NOWHERE = "amqp://guest:guest@127.0.0.1:1/"


@pytest.fixture
def app() -> App:
    return make_app("stub", broker_url=NOWHERE, connect_timeout_s=0.2)


def test_sends_wait_in_their_queue_until_the_stub_runs_them(app: App) -> None:
    with StubBroker(app) as stub:
        handle = app.tasks["kit.add"].delay(2, 3)
        (queued,) = stub.queue("stub.main")
        assert (queued.id, queued.task_name, queued.args, queued.kwargs) == (handle.id, "kit.add", [2, 3], {})
        assert app.backend is not None and app.backend.fetch(handle.id) is None
        assert stub.run_until_idle() == 1
        assert stub.queue("stub.main") == [] and handle.get() == 5
    assert app.clients.local is None


def test_a_countdown_of_an_hour_runs_after_advance_and_never_earlier_in_well_under_a_second(app: App) -> None:
    started = time.perf_counter()
    with StubBroker(app) as stub:
        handle = app.tasks["kit.add"].apply_async((1, 2), countdown=3600)
        assert stub.run_until_idle() == 0
        [(due, waiting)] = stub.scheduled("stub.main")
        assert waiting.id == handle.id and due == pytest.approx(stub.now() + 3600, abs=1)
        stub.advance(3599)
        assert stub.run_until_idle() == 0 and stub.queue("stub.main") == []
        stub.advance(1)
        assert stub.run_until_idle() == 1 and handle.get(timeout=0) == 3
    assert time.perf_counter() - started < 1.0


def test_retries_pass_through_the_delay_ladder_on_the_clock(app: App) -> None:
    # kit.flaky: back-off 0.1 s doubling, no jitter; it succeeds on its third attempt
    with StubBroker(app) as stub:
        handle = app.tasks["kit.flaky"].delay(2)
        assert stub.run_until_idle() == 1
        [(due, copy)] = stub.scheduled("stub.main")
        assert copy.attempt == 2 and "x-death" not in copy.headers
        assert due == pytest.approx(stub.now() + 0.1, abs=0.05)
        assert stub.run_until_idle(advance=True) == 2
        assert handle.get() == 3 and stub.dead_letters("stub.main") == [] and stub.dropped == []


def test_a_call_runs_the_queues_until_its_reply_and_times_out_on_the_clock(app: App) -> None:
    with StubBroker(app) as stub:
        assert app.tasks["kit.flaky"].call(2) == 3  # retries included: 0.3 s of virtual time
        with pytest.raises(TimeoutError):
            app.tasks["kit.later"].call(60, 1, timeout=30)  # its retry is due after the call gave up
        assert [m.task_name for _, m in stub.scheduled()] == ["kit.later"]


def test_dead_letters_carry_the_workers_reason_headers(app: App) -> None:
    with StubBroker(app) as stub:
        app.tasks["kit.boom"].delay("x")
        app.tasks["kit.flaky"].delay(9)
        app.tasks["kit.weird"].delay()
        app.tasks["kit.add"].apply_async((1, 2), expires=datetime.now(UTC) - timedelta(seconds=1))
        app.send(Outgoing("stub.main", encode_body(["a"], {}), new_id(), "kit.add"))
        app.send(Outgoing("stub.main", b"{}", new_id(), "kit.nobody"))
        stub.run_until_idle(advance=True)
        reasons = sorted((m.task_name, m.reason, m.exc_type) for m in stub.dead_letters("stub.main"))
    assert reasons == [
        ("kit.add", "expired", ""),
        ("kit.add", "invalid arguments", "ArgumentsInvalid"),
        ("kit.boom", "task raised", "ValueError"),
        ("kit.flaky", "max retries exceeded", "Flaky"),
        ("kit.nobody", "unknown task", "TaskNotFound"),
        ("kit.weird", "result not JSON-serialisable", "TypeError"),
    ]


def test_each_dead_letter_is_listed_with_its_reason(app: App) -> None:
    msg = Outgoing("stub.main", encode_body(["a"], {}), new_id(), "kit.add")
    with StubBroker(app) as stub:
        app.send(msg)
        stub.run_until_idle()
        (dead,) = stub.dead_letters("stub.main")
        assert (dead.id, dead.reason, dead.exc_type) == (msg.message_id, "invalid arguments", "ArgumentsInvalid")
        assert dead.headers["rt-queue"] == "stub.main" and dead.args == ["a"]


def test_a_message_that_keeps_killing_its_worker_ends_with_reason_delivery_limit() -> None:
    app = App("limits", broker_url=NOWHERE, delivery_limit=3)
    ran: list[int] = []

    @app.task(queue="q")
    def poison() -> None:
        ran.append(1)

    with StubBroker(app) as stub:
        poison.delay()
        assert stub.lose_delivery("q") is not None and stub.lose_delivery("q") is not None
        (back,) = stub.queue("q")
        assert back.returns == 2  # the broker counted both
        stub.lose_delivery("q")
        stub.run_until_idle()  # the fourth delivery: the worker dead-letters it with its reason
        (dead,) = stub.dead_letters("q")
    assert ran == [] and dead.reason == "delivery limit"


def test_a_redelivered_message_on_a_classic_queue_is_counted_by_the_worker() -> None:
    app = App("classic", broker_url=NOWHERE, delivery_limit=2)

    @app.task(queue="cq", queue_type="classic")
    def crashy() -> int:
        return 1

    with StubBroker(app) as stub:
        handle = crashy.delay()
        stub.lose_delivery("cq")
        stub.run_until_idle()  # re-published through the ladder's shortest level with rt-delivery-count
        [(_, copy)] = stub.scheduled("cq")
        assert copy.headers[H_DELIVERY_COUNT] == 1
        assert stub.run_until_idle(advance=True) == 1 and handle.get() == 1


def test_the_stub_runs_the_workers_own_stages(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    admit, settle_ = redelivery.Redeliveries.admit, settle.Settler.settle
    monkeypatch.setattr(redelivery.Redeliveries, "admit", lambda s, m: calls.append("admit") or admit(s, m))
    monkeypatch.setattr(settle.Settler, "settle", lambda s, o: calls.append(f"settle {o.reason}") or settle_(s, o))
    with StubBroker(app) as stub:
        app.tasks["kit.add"].delay(1, 1)
        app.tasks["kit.boom"].delay("x")
        stub.run_until_idle()
    assert calls == ["admit", "settle None", "admit", "settle task raised"]


def test_unroutable_and_full_queues_refuse_a_publish_as_the_broker_does() -> None:
    app = App("full", broker_url=NOWHERE)

    @app.task(queue="small", max_length=1)
    def one() -> None: ...

    with StubBroker(app):
        with pytest.raises(PublishNotConfirmed, match="no queue is bound"):
            app.send(Outgoing("nowhere", encode_body([], {}), new_id(), "x"))
        one.delay()
        with pytest.raises(PublishNotConfirmed, match="nack"):
            one.delay()


def test_async_runs_use_the_callers_loop(app: App) -> None:
    async def main() -> int:
        stub = StubBroker(app).start()
        try:
            handle = await app.tasks["kit.amul"].adelay(6, 7)
            assert await stub.arun_until_idle() == 1
            return int(await handle.aget(timeout=0))
        finally:
            stub.stop()

    assert asyncio.run(main()) == 42


def test_run_until_idle_consumes_only_the_queues_asked_for(app: App) -> None:
    with StubBroker(app) as stub:
        app.tasks["kit.add"].delay(1, 1)
        app.tasks["kit.amul"].delay(2, 2)
        assert stub.run_until_idle(queues=["stub.aio"]) == 1
        assert [m.task_name for m in stub.queue("stub.main")] == ["kit.add"]


def test_a_task_that_sends_itself_forever_stops_the_run_instead_of_hanging_it(app: App) -> None:
    with StubBroker(app) as stub:
        app.tasks["kit.retry_forever"].delay()
        with pytest.raises(RuntimeError, match="sends itself forever"):
            stub.run_until_idle(advance=True, max_deliveries=50)


def test_handle_get_runs_the_stub_until_the_result_is_there(app: App) -> None:
    with StubBroker(app):
        handle = app.tasks["kit.flaky"].delay(1)
        assert handle.get() == 2


def test_reject_dead_letters_with_the_tasks_reason() -> None:
    app = App("reject", broker_url=NOWHERE)

    @app.task(queue="q")
    def refuse() -> None:
        raise Reject("not for us")

    with StubBroker(app) as stub:
        with pytest.raises(TaskError) as caught:
            refuse.call()
        (dead,) = stub.dead_letters("q")
    assert caught.value.reason == dead.reason == "rejected by task" and dead.exc_message == "not for us"


def test_a_dedupe_task_runs_one_copy_of_an_id_within_its_window_as_on_a_worker() -> None:
    app = App("dedupe", broker_url=NOWHERE)
    runs: list[int] = []

    @app.task(queue="q", dedupe_s=60)
    def once(n: int) -> int:
        runs.append(n)
        return n

    with StubBroker(app) as stub:
        first = once.apply_async((1,), message_id="order-7")
        once.apply_async((2,), message_id="order-7")  # a producer's second send of the same id
        assert stub.run_until_idle() == 2 and runs == [1]  # the copy was acked unrun
        assert first.get(timeout=0) == 1 and stub.queue("q") == [] and stub.dead_letters("q") == []
        stub.advance(61)  # the claim queue expired (x-expires): the id may run again
        once.apply_async((3,), message_id="order-7")
        stub.run_until_idle()
    assert runs == [1, 3]
