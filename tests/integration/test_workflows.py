"""Chains, groups and chords against a real broker and a real worker: results correct and in order,
the join on the broker, the failure policy, and the ids fixed at build time."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rabbittask import App, ArgumentsInvalid, ConfigError, TaskError, chain, chord, group
from rabbittask.ops.dlq import DeadLetterQueue
from rabbittask.ops.status import gather
from tests import amqp
from tests.apps.workflow_app import make_app, read_ledger
from tests.redis_server import RedisServer, redis_server_fixture, redis_url_fixture  # noqa: F401 - fixtures
from tests.waiting import assert_stays, wait_until
from tests.workers import WorkerProcess, worker_env

APP = "tests.apps.workflow_app:app"


@pytest.fixture(scope="module")
def prefix(broker_url: str) -> Iterator[str]:
    name = f"rt-wf-{uuid.uuid4().hex[:8]}"
    yield name
    amqp.delete(broker_url, [f"{name}.wf", f"{name}.wf.dlq", f"{name}.join"])


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("wf-ledger")


@pytest.fixture(scope="module")
def worker(
    prefix: str, broker_url: str, redis_url: str, ledger: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """One worker (one child, 4 threads) for the module, storing results in Redis."""
    log = tmp_path_factory.mktemp("wf-worker") / "worker.log"
    env = {
        "RT_TEST_PREFIX": prefix,
        "RT_TEST_LEDGER": str(ledger),
        "RABBITTASK_RESULT_BACKEND": redis_url,
        "RABBITTASK_JOIN_HOLD_S": "2",  # a chord running longer lets go of its records (and gets them back)
    }
    w = WorkerProcess(["-A", APP, "--threads", "4", "--prefetch", "200"], worker_env(broker_url, env), log)
    try:
        w.wait_for_log("consuming from")
        yield w
    finally:
        w.stop()


@pytest.fixture
def app(prefix: str, broker_url: str, redis_url: str, worker: WorkerProcess) -> Iterator[App]:
    app = make_app(prefix, broker_url, result_backend=redis_url)
    yield app
    app.close()


def t(app: App, name: str) -> Any:
    return app.tasks[f"wf.{name}"]


def ledger_events(ledger: Path, event: str, tag: str) -> list[dict[str, Any]]:
    return [r for r in read_ledger(str(ledger)) if r["event"] == event and r.get("tag") == tag]


# -- chains ------------------------------------------------------------------------------------------


def test_a_chain_of_three_passes_each_result_on_and_call_returns_the_last(app: App) -> None:
    add, double, label = t(app, "add"), t(app, "double"), t(app, "label")
    # (2 + 3) * 2 -> "n:10"
    assert chain(add.s(2, 3), double.s(), label.s("n")).call(timeout=60) == "n:10"
    assert (add.s(1, 1) | double.s() | double.s()).call(timeout=60) == 8


def test_a_chain_handle_knows_every_step_id_and_gets_the_final_result(app: App) -> None:
    add, double = t(app, "add"), t(app, "double")
    wf = chain(add.s(1, 2), double.s(), double.s())
    handle = wf.delay()
    assert [s.id for s in handle.steps] == [f"{wf.id}:0", f"{wf.id}:1", f"{wf.id}:2"]
    assert handle.get(timeout=60) == 12
    assert handle.steps[0].get(timeout=10) == 3  # every step's result is stored under its fixed id


def test_an_immutable_step_ignores_the_previous_result_and_set_applies_options(app: App) -> None:
    add, label = t(app, "add"), t(app, "label")
    assert chain(add.s(1, 2), label.si("fixed", "p").set(countdown=0.5)).call(timeout=60) == "p:fixed"


def test_a_step_retried_through_the_delay_ladder_still_continues_the_chain(app: App) -> None:
    flaky, double = t(app, "flaky"), t(app, "double")
    assert chain(flaky.s(1), double.s()).call(timeout=60) == 202


def test_a_step_replayed_from_the_dead_letter_queue_continues_the_chain(app: App, prefix: str) -> None:
    fails_once, double = t(app, "fails_once"), t(app, "double")
    key = uuid.uuid4().int % 1_000_000
    handle = chain(fails_once.s(key), double.s()).delay()
    dlq = DeadLetterQueue(app.settings, f"{prefix}.wf")
    first = handle.steps[0].id
    wait_until(lambda: dlq.replay(ids=[first]).replayed, 30, "the first step in the dead-letter queue, replayed")
    assert handle.get(timeout=60) == 2 * (key + 1000)


def test_a_failed_step_stops_the_chain_and_call_raises_its_error(app: App) -> None:
    reject, double = t(app, "reject"), t(app, "double")
    with pytest.raises(TaskError, match="member 7 refuses"):
        chain(reject.s(7), double.s()).call(timeout=60)


def test_a_result_too_large_for_the_next_step_dead_letters_the_step_saying_why(app: App) -> None:
    big, label = t(app, "big"), t(app, "label")
    with pytest.raises(TaskError, match="above max_payload_bytes") as raised:
        chain(big.s(9 * 1024 * 1024), label.s("p")).call(timeout=60)
    assert raised.value.reason == "result not JSON-serialisable" and raised.value.type_name == "PayloadError"


def test_bad_workflows_are_refused_before_anything_is_sent(app: App) -> None:
    add, double = t(app, "add"), t(app, "double")
    with pytest.raises(ArgumentsInvalid, match="wf.add"):
        chain(add.s(1), double.s()).delay()  # the first step gets no previous result: it must be complete
    with pytest.raises(ArgumentsInvalid, match="x"):
        double.s("not a number")
    with pytest.raises(ConfigError, match="expected a task signature"):
        chain(add.s(1, 2), "double")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="cannot be set; the options are countdown, expires, priority, queue"):
        double.s().set(retries=3)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="at least one"):
        chain()


# -- groups ------------------------------------------------------------------------------------------


def test_a_group_of_1000_from_a_generator_returns_every_result_in_order(app: App) -> None:
    square = t(app, "square")
    assert group(square.s(i) for i in range(1000)).call(timeout=120) == [i * i for i in range(1000)]


def test_a_group_handle_gives_each_member_by_its_fixed_id(app: App) -> None:
    double = t(app, "double")
    g = group(double.s(i) for i in range(5))
    handle = g.delay()
    assert [m.id for m in handle.members] == [f"{g.id}:{i}" for i in range(5)]
    assert handle.get(timeout=60) == [0, 2, 4, 6, 8]


# -- chords ------------------------------------------------------------------------------------------


def test_a_chord_of_1000_gives_the_callback_every_result_in_member_order_once(app: App, ledger: Path) -> None:
    sleepy, collect = t(app, "sleepy"), t(app, "collect")
    # Members finish out of order (sleeps vary), the callback still sees them in member order.
    header = (sleepy.s(i, 0.002 * (i % 5)) for i in range(1000))
    c = chord(header, collect.s(tag="c1000"))
    assert c.call(timeout=180) == 1000
    runs = ledger_events(ledger, "callback", "c1000")
    assert len(runs) == 1
    assert runs[0]["results"] == list(range(1000))
    assert runs[0]["id"] == f"{c.id}:callback"


def test_a_chord_handle_gets_the_callbacks_result(app: App) -> None:
    add, collect = t(app, "add"), t(app, "collect")
    handle = chord([add.s(i, i) for i in range(10)], collect.s(tag="handle")).delay()
    assert handle.final is not None and handle.final.id.endswith(":callback")
    assert handle.get(timeout=60) == 10


def test_a_chord_member_may_be_a_chain(app: App, ledger: Path) -> None:
    add, double, collect = t(app, "add"), t(app, "double"), t(app, "collect")
    chord([add.s(i, 1) | double.s() for i in range(4)], collect.s(tag="chains")).call(timeout=60)
    (run,) = ledger_events(ledger, "callback", "chains")
    assert run["results"] == [2, 4, 6, 8]


def test_a_dead_lettered_member_runs_on_error_once_and_never_the_callback(app: App, ledger: Path) -> None:
    add, reject, collect, alert = t(app, "add"), t(app, "reject"), t(app, "collect"), t(app, "alert")
    members = [add.s(i, 0) for i in range(5)] + [reject.s(5)]
    c = chord(members, collect.s(tag="fails"), on_error=alert.s(tag="fails"))
    with pytest.raises(TaskError, match="1 member\\(s\\) failed for good") as raised:
        c.call(timeout=60)
    assert raised.value.type_name == "ChordFailed"
    (run,) = wait_until(lambda: ledger_events(ledger, "on_error", "fails"), 30, "on_error ran")
    assert run["id"] == f"{c.id}:on_error"
    assert run["failures"] == [
        {
            "failed": True,
            "id": f"{c.id}:5",
            "index": 5,
            "reason": "rejected by task",
            "exc_type": "Reject",
            "message": "member 5 refuses",
        }
    ]
    assert_stays(lambda: not ledger_events(ledger, "callback", "fails"), 1.0, "the callback never runs")
    assert len(ledger_events(ledger, "on_error", "fails")) == 1


def test_allow_failures_passes_failure_records_to_the_callback(app: App, ledger: Path) -> None:
    add, reject, collect = t(app, "add"), t(app, "reject"), t(app, "collect")
    c = chord([add.s(1, 1), reject.s(1), add.s(2, 2)], collect.s(tag="allow"), allow_failures=True)
    assert c.call(timeout=60) == 3
    (run,) = ledger_events(ledger, "callback", "allow")
    assert run["results"][0] == 2 and run["results"][2] == 4
    assert run["results"][1]["failed"] is True and run["results"][1]["reason"] == "rejected by task"


def test_a_chord_whose_results_are_too_large_fails_with_a_clear_reason(app: App, ledger: Path) -> None:
    label, collect, alert = t(app, "label"), t(app, "collect"), t(app, "alert")
    # 40 results of 220 kB: together above the worker's max_payload_bytes (8 MiB), each well below it.
    members = [label.s("x" * 220_000, str(i)) for i in range(40)]
    with pytest.raises(TaskError, match="above max_payload_bytes"):
        chord(members, collect.s(tag="big"), on_error=alert.s(tag="big")).call(timeout=120)
    (run,) = wait_until(lambda: ledger_events(ledger, "on_error", "big"), 30, "on_error ran")
    assert run["failures"][0]["reason"] == "results too large"
    assert not ledger_events(ledger, "callback", "big")


def test_status_shows_a_running_chord_with_members_done_of_total(app: App, ledger: Path, worker: WorkerProcess) -> None:
    sleepy, collect = t(app, "sleepy"), t(app, "collect")
    c = chord([sleepy.s(i, 0.4) for i in range(40)], collect.s(tag="status"))
    c.delay()

    def running() -> dict[str, Any] | None:
        data = asyncio.run(gather(app, 2.5))
        return next((w for w in data["workflows"] if w["id"] == c.id), None)

    row = wait_until(running, 30, "the chord in `rabbittask status`")
    assert row["total"] == 40 and 0 < row["done"] <= 40
    (run,) = wait_until(lambda: ledger_events(ledger, "callback", "status"), 60, "the chord's callback")
    # The chord ran longer than join_hold_s (2 s here): the joiner let go of its records on the way
    assert "held records for 2 s; compacting them" in worker.log()
    assert run["results"] == list(range(40))


async def test_the_async_twins_run_chains_groups_and_chords(app: App) -> None:
    add, double, collect = t(app, "add"), t(app, "double"), t(app, "collect")
    assert await (add.s(1, 2) | double.s()).acall(timeout=60) == 6
    assert await group(double.s(i) for i in range(5)).acall(timeout=60) == [0, 2, 4, 6, 8]
    assert await chord([add.s(i, i) for i in range(3)], collect.s(tag="async")).acall(timeout=60) == 3
    handle = await chain(add.s(2, 2), double.s()).adelay()
    assert await handle.aget(timeout=60) == 8
    await app.aclose()
