"""Eager mode: each task runs as it is sent, through the real message and the worker's own stages, no broker."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from rabbittask import App, ArgumentsInvalid, ConfigError, PayloadError, TaskContext, TaskError
from rabbittask.message import Outgoing, encode_body, new_id
from rabbittask.testing import Eager
from tests.apps.kit_app import make_app

NOWHERE = "amqp://guest:guest@127.0.0.1:1/"  # nothing listens: any network use would fail


@pytest.fixture
def app() -> App:
    return make_app("eager", broker_url=NOWHERE, connect_timeout_s=0.2)


def test_delay_runs_the_task_at_once_and_get_returns_its_result(app: App) -> None:
    with app.eager():
        handle = app.tasks["kit.add"].delay(2, 3)
        assert handle.get() == 5
        assert handle.status == "SUCCESS"


def test_every_way_to_send_runs_the_task(app: App) -> None:
    add = app.tasks["kit.add"]
    with app.eager():
        assert add.apply_async((1, 1)).get() == 2
        assert add.apply_async(kwargs={"x": 1, "y": 2}, countdown=3600).get() == 3  # the countdown is not slept
        assert add.call(2, 2) == 4
        with app.batch():
            handles = [add.delay(i, i) for i in range(3)]
        assert [h.get() for h in handles] == [0, 2, 4]


def test_async_twins_run_the_task_on_the_callers_loop(app: App) -> None:
    add, amul = app.tasks["kit.add"], app.tasks["kit.amul"]

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        got = [await amul.acall(3, 4), await (await amul.adelay(2, 5)).aget()]
        got.append(await (await add.aapply_async((1, 2))).aget())
        async with app.abatch():
            handle = await amul.adelay(6, 7)
        got.append(await handle.aget())
        assert asyncio.get_running_loop() is loop
        return got

    with app.eager():
        assert asyncio.run(main()) == [12, 10, 3, 42]


def test_a_sync_send_from_inside_a_running_loop_still_runs_the_task(app: App) -> None:
    async def main() -> int:
        return int(app.tasks["kit.amul"].delay(3, 3).get())

    with app.eager():
        assert asyncio.run(main()) == 9


def test_a_failure_raises_task_error_with_the_remote_type_and_the_dead_letter_reason(app: App) -> None:
    with app.eager() as eager:
        handle = app.tasks["kit.boom"].delay("no")
        with pytest.raises(TaskError) as caught:
            handle.get()
        with pytest.raises(TaskError):
            app.tasks["kit.boom"].call("no")
    assert caught.value.type_name == "ValueError" and caught.value.reason == "task raised"
    assert "boom: no" in caught.value.remote_message and "ValueError" in caught.value.remote_traceback
    assert [m.reason for m in eager.dead_letters("eager.main")] == ["task raised", "task raised"]


def test_arguments_are_validated_and_json_round_tripped_as_on_the_wire(app: App) -> None:
    when = app.tasks["kit.when"]
    at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    with app.eager():
        handle = when.delay(
            at.isoformat()
        )  # a string the signature turns into a datetime, in the caller and the worker
        got = handle.get()
        echoed = app.tasks["kit.echo"].delay({"t": (1, 2), "s": "é"}).get()
        with pytest.raises(ArgumentsInvalid):
            app.tasks["kit.add"].delay(1, "two")
        with pytest.raises(PayloadError):
            app.tasks["kit.echo"].delay(object())
        with pytest.raises(TypeError):  # AMQP headers cannot carry it either
            app.tasks["kit.echo"].apply_async((1,), headers={"bad": object()})
    assert got == {"at": at.isoformat(), "type": "datetime", "id": handle.id, "queue": "eager.main"}
    assert echoed == {"t": [1, 2], "s": "é"}  # a tuple arrives as a list, as from a real worker


def test_a_message_the_worker_finds_invalid_fails_with_reason_invalid_arguments(app: App) -> None:
    # As from another producer: the caller's check is skipped, the worker's is not.
    msg = Outgoing("eager.main", encode_body(["x", 1], {}), new_id(), "kit.add")
    with app.eager():
        with pytest.raises(TaskError) as caught:
            app.send(msg).get()
    assert caught.value.type_name == "ArgumentsInvalid" and caught.value.reason == "invalid arguments"


def test_bind_gets_a_real_context_and_autoretry_runs_the_retries_without_sleeping(app: App) -> None:
    started = time.perf_counter()
    with app.eager() as eager:
        assert app.tasks["kit.flaky"].delay(2).get() == 3  # attempt 3 succeeded
        assert app.tasks["kit.later"].delay(3600, 2).get() == 3  # two retries an hour apart
    assert time.perf_counter() - started < 1.0
    assert eager.dead_letters("eager.main") == []


def test_a_task_that_runs_out_of_retries_fails_with_max_retries_exceeded(app: App) -> None:
    with app.eager() as eager:
        with pytest.raises(TaskError) as caught:
            app.tasks["kit.flaky"].delay(10).get()
    assert caught.value.type_name == "Flaky" and caught.value.reason == "max retries exceeded"
    (dead,) = eager.dead_letters("eager.main")
    assert dead.reason == "max retries exceeded" and dead.attempt == 4


def test_an_expired_message_is_not_run(app: App) -> None:
    past = datetime.now(UTC) - timedelta(seconds=1)
    with app.eager():
        with pytest.raises(TaskError) as caught:
            app.tasks["kit.add"].apply_async((1, 2), expires=past).get()
        with pytest.raises(TaskError) as later:
            app.tasks["kit.add"].apply_async((1, 2), countdown=60, expires=30).get()
    assert caught.value.reason == "expired" and later.value.reason == "expired"


def test_a_result_json_cannot_carry_fails_the_task(app: App) -> None:
    with app.eager():
        with pytest.raises(TaskError) as caught:
            app.tasks["kit.weird"].delay().get()
    assert caught.value.type_name == "TypeError" and caught.value.reason == "result not JSON-serialisable"


def test_a_task_may_send_and_wait_for_another_inside_eager_mode() -> None:
    app = App("nested", broker_url=NOWHERE)

    @app.task(queue="q")
    def double(x: int) -> int:
        return 2 * x

    @app.task(queue="q", bind=True)
    def outer(ctx: TaskContext, x: int) -> list[int]:
        return [double.delay(x).get(), double.call(x + 1)]

    with app.eager():
        assert outer.delay(5).get() == [10, 12]


def test_a_task_that_ignores_its_result_has_none_to_get_as_with_a_real_worker() -> None:
    app = App("ignored", broker_url=NOWHERE)

    @app.task(queue="q", ignore_result=True)
    def fire() -> int:
        return 1

    with app.eager():
        with pytest.raises(ConfigError, match="ignore_result"):
            fire.delay().get()


def test_eager_mode_ends_with_its_block_and_can_be_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app("eager", broker_url=NOWHERE)
    with app.eager() as eager:
        assert isinstance(eager, Eager) and app.clients.local is eager
    assert app.clients.local is None
    assert make_app("eager", broker_url=NOWHERE, eager=True).tasks["kit.add"].delay(1, 2).get() == 3
    monkeypatch.setenv("RABBITTASK_EAGER", "1")
    assert make_app("eager", broker_url=NOWHERE).tasks["kit.add"].call(4, 5) == 9
