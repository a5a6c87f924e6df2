"""The control plane without a broker: the revocation window, the runs registry, commands and their signatures."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from aiormq.abc import DeliveredMessage
from pamqp import commands
from pamqp.header import ContentHeader

from rabbittask import App, TaskContext, TaskRevoked
from rabbittask.control.local import ARGS_CHARS, REVOKED, Revocations, Runs
from rabbittask.control.wire import Command, authentic, outgoing
from rabbittask.topology import control_stream_arguments as stream_arguments
from rabbittask.worker import catchup
from rabbittask.worker.catchup import CatchUp
from rabbittask.worker.outcome import Outcome, Reason
from rabbittask.worker.revoke import RevokeStage


def delivered(mid: str = "m-1", body: bytes = b"{}", headers: dict[str, Any] | None = None) -> DeliveredMessage:
    props = commands.Basic.Properties(message_id=mid, message_type="t.task", headers=headers)
    deliver = commands.Basic.Deliver("ctag", 1, False, "rabbittask", "q")
    return DeliveredMessage(deliver, ContentHeader(properties=props), body, None)  # type: ignore[arg-type]


def test_revocations_are_forgotten_once_older_than_the_window() -> None:
    revoked = Revocations()
    revoked.window_s = 60
    now = time.time()
    assert revoked.add(["a", "b"], now - 50, terminate=False) == ["a", "b"]
    assert revoked.add(["c"], now - 120, terminate=False) == []  # older than the window: never kept
    assert revoked.add(["a"], now, terminate=False) == []  # known already (the stream and the broadcast both bring it)
    assert "a" in revoked and "c" not in revoked
    assert revoked.prune(now + 15) == 1  # b was revoked 65 s before then; a was refreshed
    assert "b" not in revoked and len(revoked) == 1


def test_a_later_terminate_of_a_revoked_id_is_new_and_is_kept() -> None:
    revoked = Revocations()
    now = time.time()
    revoked.add(["a"], now, terminate=False)
    assert not revoked.terminated("a")
    assert revoked.add(["a"], now, terminate=True) == ["a"]
    assert revoked.terminated("a")
    revoked.add(["a"], now, terminate=False)  # a plain revoke does not undo a terminate
    assert revoked.terminated("a")


def test_runs_describe_their_arguments_truncated_and_count_the_ends() -> None:
    runs = Runs()
    run = runs.start(delivered("r1"), "t.task", ("x" * 500,), {"n": 1})
    (described,) = [r.describe(time.time()) for r in runs.active.values()]
    assert described["id"] == "r1" and described["name"] == "t.task"
    assert len(described["args"]) == ARGS_CHARS and described["args"].endswith("...")
    assert described["runtime_s"] >= 0
    assert runs.end(run, failed=True) is False
    assert runs.active == {} and runs.failed == 1 and runs.done == 0


def test_check_revoked_raises_task_revoked_only_after_a_terminate() -> None:
    ctx = TaskContext("t-1", "t.task", "q")
    try:
        ctx.check_revoked()
        REVOKED.add(["t-1"], time.time(), terminate=False)
        ctx.check_revoked()  # revoked, but not to be terminated: a run under way goes on
        REVOKED.add(["t-1"], time.time(), terminate=True)
        with pytest.raises(TaskRevoked, match=r"task 't.task' \(id t-1\) was revoked with terminate=True"):
            ctx.check_revoked()
    finally:
        REVOKED.clear()


def test_the_revoke_stage_dead_letters_a_revoked_message_unrun_and_admits_the_others() -> None:
    settled: list[Outcome] = []
    stage = RevokeStage(settled.append, lambda m: None, asyncio.Event())
    try:
        assert stage.admit(delivered("kept"))
        REVOKED.add(["gone"], time.time(), terminate=False)
        assert stage.admit(delivered("kept"))
        assert not stage.admit(delivered("gone"))
        (outcome,) = settled
        assert outcome.reason is Reason.REVOKED and outcome.reason.value == "revoked" and not outcome.reason.ran
        assert outcome.exc_type == "TaskRevoked"
    finally:
        REVOKED.clear()


def test_a_command_is_for_everyone_or_for_the_workers_it_names() -> None:
    assert Command(command="ping").addressed_to("h", (10, 1))
    named = Command(command="ping", destination=("h:1",))
    assert named.addressed_to("h", (10, 1))  # its supervisor is named
    assert named.addressed_to("h", (1, 0))
    assert not named.addressed_to("h", (10, 2)) and not named.addressed_to("other", (10, 1))


def test_signed_control_messages_verify_and_unsigned_or_altered_ones_do_not() -> None:
    keys = {"k1": "a-secret-of-enough-length"}
    signer = App("signer", signing_keys=keys, signing_key_id="k1").settings
    checker = App("checker", signing_keys=keys).settings
    body, props = outgoing(signer, "ping", {"command": "ping"})
    message = delivered(props.message_id, body, props.headers)
    message.header.properties.message_type = props.message_type
    assert authentic(checker, message) == ""
    altered = delivered(props.message_id, json.dumps({"command": "stats"}).encode(), props.headers)
    altered.header.properties.message_type = props.message_type
    assert "does not match" in authentic(checker, altered)
    unsigned_body, unsigned = outgoing(App("plain").settings, "ping", {"command": "ping"})
    plain = delivered(unsigned.message_id, unsigned_body, unsigned.headers)
    assert "not signed" in authentic(checker, plain)
    assert authentic(App("open").settings, plain) == ""  # no keys: every control message is obeyed


def test_control_streams_keep_their_window_in_small_segments() -> None:
    args = stream_arguments(86400)
    assert args["x-queue-type"] == "stream" and args["x-max-age"] == "86400s"
    assert args["x-stream-max-segment-size-bytes"] <= 10_000_000  # retention drops whole segments


def test_revoke_retention_and_terminate_grace_are_checked_settings() -> None:
    from rabbittask import ConfigError

    with pytest.raises(ConfigError, match="revoke_retention_s"):
        App("x", revoke_retention_s=0)
    with pytest.raises(ConfigError, match="terminate_grace_s"):
        App("x", terminate_grace_s=-1)


def test_rates_read_per_second_minute_and_hour_and_refuse_anything_else() -> None:
    from rabbittask.control.rates import Rates, parse_rate

    assert parse_rate("100/s").per_s == 100
    assert parse_rate("30/m").per_s == 0.5 and parse_rate("36/h").per_s == 0.01
    assert parse_rate("5").per_s == 5 and parse_rate("10/s", 4).burst == 4
    for bad, says in (("fast", "is not a rate"), ("0/s", "is 0"), ("10/d", "is not a rate")):
        with pytest.raises(ValueError, match=says):
            parse_rate(bad)
    with pytest.raises(ValueError, match="burst must be 1 or more"):
        parse_rate("1/s", 0)
    rates = Rates()
    rates.declared = {"t": parse_rate("10/s")}
    rates.override("t", parse_rate("50/s"), at=2.0)
    rates.override("t", parse_rate("1/s"), at=1.0)  # older than the one applied: ignored
    assert rates.of("t") == parse_rate("50/s")
    rates.override("t", None, at=3.0)  # a later "no limit"
    assert rates.of("t") is None and rates.limited() == {}


def test_rate_limit_options_are_checked_where_the_task_is_declared() -> None:
    from rabbittask import ConfigError

    app = App("rates")
    assert app.task(name="a", rate_limit="10/m", rate_limit_burst=3)(lambda: None).rate_limit is not None
    with pytest.raises(ConfigError, match="rate_limit_burst"):
        app.task(name="b", rate_limit="1/s", rate_limit_burst=0)(lambda: None)


async def test_while_the_revocations_are_not_read_a_message_waits_and_a_warm_shutdown_hands_it_back() -> None:
    handed: list[DeliveredMessage] = []
    handing_back, catch_up = asyncio.Event(), CatchUp()
    stage = RevokeStage(lambda o: None, handed.append, handing_back, catch_up)
    assert not stage.caught_up()
    waiting = asyncio.ensure_future(stage.wait(delivered("a")))
    await asyncio.sleep(0.1)
    assert not waiting.done()  # waits for the revocations
    catch_up.reading()
    catch_up.read(0, 60)
    assert await waiting is True and stage.caught_up()
    catch_up.lost()  # its connection was lost after it had read: tasks wait again
    assert not stage.caught_up()
    waiting = asyncio.ensure_future(stage.wait(delivered("b")))
    await asyncio.sleep(0.1)
    handing_back.set()
    assert await waiting is False and [m.header.properties.message_id for m in handed] == ["b"]
    catch_up.close()


async def test_the_catch_up_takes_the_window_as_read_after_its_wait_and_a_refused_reconnect_does_not_reset_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(catchup, "WAIT_S", 0.2)
    monkeypatch.setattr(catchup, "QUIET_GAP_S", 0.1)
    catch_up = CatchUp()
    catch_up.trouble = "the control connection failed: connection refused"
    await asyncio.wait_for(catch_up.wait(asyncio.Event()), 5)
    assert catch_up.done.is_set()
    assert "could not all be read within 0 s (no control connection: the control connection failed" in caplog.text
    catch_up.lost()  # a reconnect that never read the stream: no second wait
    assert catch_up.done.is_set()


async def test_a_cancelled_error_from_aiormq_is_a_lost_control_connection_not_the_end_of_the_control_plane(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rabbittask.worker import control

    calls: list[int] = []

    async def connect(settings: object, role: str) -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise asyncio.CancelledError  # as aiormq cancels a pending call when its connection closes
        raise ConnectionError("refused")

    monkeypatch.setattr(control, "connect", connect)
    monkeypatch.setattr(control, "BACKOFF_FIRST_S", 0.01)
    plane = control.ControlPlane(App("t"), ["q"], stats=dict, waiting=list, on_stuck=lambda run: None)
    plane.start()
    try:
        await asyncio.sleep(0.2)
        assert len(calls) >= 2 and plane._task is not None and not plane._task.done()  # it went on reconnecting
    finally:
        await plane.close()
        assert plane._task is not None and plane._task.done()  # a real cancel (close) still ends it
