"""Retry policies, the task context, scheduling headers and the pre-run admission checks (no broker)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiormq.abc import DeliveredMessage
from pamqp import commands
from pamqp.header import ContentHeader

from rabbittask import App, ArgumentsInvalid, ConfigError, Retry, TaskContext
from rabbittask.delays import MAX_DELAY_MS, delay_level_name
from rabbittask.message import H_ATTEMPT, H_DELIVERY_COUNT, H_ETA, H_EXPIRES, attempt_of, format_time, parse_time
from rabbittask.retry import RetryPolicy, due_in_ms, schedule_headers
from rabbittask.worker import redelivery
from rabbittask.worker.execute import context, failed
from rabbittask.worker.outcome import Outcome, Reason
from rabbittask.worker.redelivery import Orphans, admit
from rabbittask.worker.running import RunningMarkers


def test_exponential_backoff_doubles_from_its_base_and_stops_at_the_cap() -> None:
    policy = RetryPolicy(retry_backoff=2.0, retry_backoff_max=20.0, retry_jitter=False)
    assert [policy.delay_s(n) for n in range(1, 7)] == [2.0, 4.0, 8.0, 16.0, 20.0, 20.0]
    assert RetryPolicy(retry_backoff=True, retry_jitter=False).delay_s(3) == 4.0
    assert RetryPolicy(retry_jitter=False).delay_s(10_000) == 600.0  # no float overflow for huge attempts


def test_without_backoff_every_retry_waits_retry_delay() -> None:
    policy = RetryPolicy(retry_backoff=False, retry_delay=7.0, retry_jitter=False)
    assert {policy.delay_s(n) for n in range(1, 5)} == {7.0}


def test_jitter_draws_between_half_and_all_of_the_wait() -> None:
    policy = RetryPolicy(retry_backoff=4.0)
    assert policy.delay_s(1, rand=lambda: 0.0) == 2.0
    assert policy.delay_s(1, rand=lambda: 0.999999) == pytest.approx(4.0, abs=1e-5)
    draws = [policy.delay_s(1) for _ in range(200)]
    assert min(draws) >= 2.0 and max(draws) <= 4.0 and len(set(draws)) > 100


def test_bad_policies_are_refused_when_the_task_is_declared() -> None:
    app = App("t")
    with pytest.raises(ConfigError, match="max_retries must be"):
        app.task(queue="q", name="a", max_retries=-1)(lambda: None)
    with pytest.raises(ConfigError, match="autoretry_for takes exception classes"):
        app.task(queue="q", name="b", autoretry_for=("ValueError",))(lambda: None)
    with pytest.raises(ConfigError, match="invalid settings"):
        App("t", retry_backoff_max=0)


def test_a_task_takes_the_app_defaults_and_overrides_them() -> None:
    app = App("t", max_retries=7, retry_backoff=3.0, autoretry_for=(OSError,))

    @app.task(queue="q")
    def inherits() -> None: ...

    @app.task(queue="q", max_retries=1, autoretry_for=[KeyError], retry_jitter=False)
    def overrides() -> None: ...

    assert inherits.retry_policy == RetryPolicy(max_retries=7, retry_backoff=3.0, autoretry_for=(OSError,))
    assert overrides.retry_policy.max_retries == 1 and overrides.retry_policy.autoretry_for == (KeyError,)
    assert overrides.retry_policy.retry_backoff == 3.0 and overrides.retry_policy.retry_jitter is False
    assert inherits.retry_policy.retries_on(ConnectionResetError()) and not overrides.retry_policy.retries_on(OSError())


def test_a_bound_task_gets_a_context_and_its_arguments_are_validated_without_it() -> None:
    app = App("t")
    seen: list[TaskContext] = []

    @app.task(queue="q", bind=True)
    def bound(ctx: TaskContext, x: int) -> int:
        seen.append(ctx)
        return x * 2

    assert bound.validate(["3"], {}) == ((3,), {})
    with pytest.raises(ArgumentsInvalid, match="invalid arguments for task .*: x: Input should be a valid integer"):
        bound.message(("nope",))
    assert bound(4) == 8  # called in-process: a fresh context of a first run
    assert seen[0].task_name == bound.name and seen[0].attempt == 1 and seen[0].retries == 0 and seen[0].queue == "q"


def test_the_context_builds_the_retry_to_raise() -> None:
    ctx = TaskContext("id-1", "t", "q", attempt=3, headers={H_ATTEMPT: 3})
    cause = ValueError("boom")
    retry = ctx.retry(countdown=5, exc=cause, max_retries=9)
    assert isinstance(retry, Retry) and retry.countdown == 5 and retry.exc is cause and retry.max_retries == 9
    assert str(retry) == "retry in 5 s after ValueError: boom"
    assert ctx.retries == 2


def test_countdown_eta_and_expires_become_a_delay_and_headers() -> None:
    now = 1_000_000.0
    assert due_in_ms(countdown=1.5) == 1500.0
    assert due_in_ms(eta=datetime.fromtimestamp(now + 2, UTC), now=now) == pytest.approx(2000.0)
    assert due_in_ms(eta=datetime.fromtimestamp(now - 5, UTC), now=now) == 0.0  # past: now
    with pytest.raises(ConfigError, match="countdown or eta, not both"):
        due_in_ms(1.0, datetime.now(UTC))
    assert schedule_headers(1000, 30, now) == {H_EXPIRES: format_time(now + 30)}
    assert schedule_headers(1000, None, now) == {}
    far = schedule_headers(MAX_DELAY_MS + 5000, None, now)  # beyond one pass of the ladder
    assert parse_time(far[H_ETA]) == pytest.approx(now + MAX_DELAY_MS / 1000 + 5)


def test_apply_async_with_countdown_goes_into_the_ladder() -> None:
    app = App("t", exchange="shop")

    @app.task(queue="emails")
    def send(to: str) -> None: ...

    msg = send.message(("a@b.c",), countdown=1.0, expires=timedelta(hours=1).total_seconds())
    assert msg.delay_ms == 1000 and msg.routing_key == "emails" and H_EXPIRES in (msg.headers or {})
    assert send.message(("a@b.c",), countdown=0).delay_ms == 0
    with pytest.raises(ConfigError, match="queue 'elsewhere' is not one of the app's queues"):
        send.message(("a@b.c",), queue="elsewhere", countdown=5)
    from rabbittask.message import publish_target

    assert publish_target(msg, "shop") == (delay_level_name("shop", 3), "0.1.0.1." + "0." * 22 + "emails")


def test_header_times_parse_from_iso_text_numbers_and_bytes() -> None:
    assert parse_time("2030-01-01T00:00:00+00:00") == datetime(2030, 1, 1, tzinfo=UTC).timestamp()
    assert parse_time("2030-01-01T00:00:00") == datetime(2030, 1, 1, tzinfo=UTC).timestamp()  # no offset: UTC
    assert parse_time(b"2030-01-01T00:00:00Z") == datetime(2030, 1, 1, tzinfo=UTC).timestamp()
    assert parse_time(12.5) == 12.5 and parse_time("soon") is None and parse_time(True) is None
    assert attempt_of(None) == 1 and attempt_of({H_ATTEMPT: 4}) == 4 and attempt_of({H_ATTEMPT: "x"}) == 1


# -- the worker's decisions, on hand-made deliveries ------------------------------------------------


def delivered(
    headers: dict[str, Any] | None = None, *, redelivered: bool = False, queue: str = "q", name: str = "t.task"
) -> DeliveredMessage:
    props = commands.Basic.Properties(message_id="m-1", message_type=name, headers=headers)
    deliver = commands.Basic.Deliver("ctag", 1, redelivered, "rabbittask", queue)
    return DeliveredMessage(deliver, ContentHeader(properties=props), b"{}", None)  # type: ignore[arg-type]


def make_app() -> App:
    app = App("t", delivery_limit=3, retry_jitter=False)

    @app.task(queue="q", name="t.task", max_retries=2, retry_backoff=0.5, autoretry_for=(OSError,))
    def task() -> None: ...

    @app.task(queue="c", name="t.classic", queue_type="classic")
    def classic() -> None: ...

    return app


def test_a_bound_task_learns_whether_and_how_often_its_message_was_delivered_before() -> None:
    app = make_app()
    task, classic = app.tasks["t.task"], app.tasks["t.classic"]

    def seen(message: DeliveredMessage, on: Any = task) -> tuple[bool, int]:
        ctx = context(app, on, message)
        return ctx.redelivered, ctx.delivery_count

    assert seen(delivered()) == (False, 1)
    assert seen(delivered({"x-delivery-count": 2}, redelivered=True)) == (True, 3)  # quorum: returns so far
    # classic: the worker's re-published copy arrives with the flag clear, counted in rt-delivery-count
    assert seen(delivered({H_DELIVERY_COUNT: 1}, queue="c", name="t.classic"), classic) == (True, 2)
    assert seen(delivered(redelivered=True, queue="c", name="t.classic"), classic) == (True, 2)  # a lower bound
    assert TaskContext("i", "t", "q").delivery_count == 1 and not TaskContext("i", "t", "q").redelivered


def test_a_first_delivery_without_schedule_headers_skips_admission(monkeypatch: pytest.MonkeyPatch) -> None:
    # What the consume callback calls: Redeliveries.admit, whose checks run only when there is something to check
    checked: list[DeliveredMessage] = []
    monkeypatch.setattr(redelivery, "admit", lambda app, message, **kw: checked.append(message))
    redeliveries = redelivery.Redeliveries(make_app(), settle=lambda o: None, running_here=list)
    first, counted = delivered(), delivered({"x-delivery-count": 0, H_ATTEMPT: 2})
    scheduled, again = delivered({H_EXPIRES: "2030-01-01T00:00:00Z"}), delivered(redelivered=True)
    assert redeliveries.admit(first) and redeliveries.admit(counted)
    assert checked == []
    assert redeliveries.admit(scheduled) and redeliveries.admit(again)
    assert checked == [scheduled, again]


def test_an_expired_message_is_dead_lettered_unrun_and_a_future_eta_is_parked_again() -> None:
    app, now = make_app(), time.time()
    expired = admit(app, delivered({H_EXPIRES: format_time(now - 1)}), now)
    assert expired is not None and expired.reason == Reason.EXPIRED and expired.republish is None
    assert admit(app, delivered({H_EXPIRES: format_time(now + 60)}), now) is None
    parked = admit(app, delivered({H_ETA: format_time(now + 90)}), now)
    assert parked is not None and parked.reason == Reason.NOT_DUE
    assert parked.republish is not None and parked.republish.delay_s == pytest.approx(90, abs=0.01)


def test_quorum_deliveries_past_the_limit_are_dead_lettered_with_the_reason() -> None:
    app = make_app()
    assert admit(app, delivered({"x-delivery-count": 2}, redelivered=True)) is None  # third start: allowed
    limited = admit(app, delivered({"x-delivery-count": 3}, redelivered=True))
    assert limited is not None and limited.reason == Reason.DELIVERY_LIMIT
    assert "delivered 3 time(s) without being settled (limit 3)" in limited.exc_message


def test_at_the_limit_only_a_message_that_was_running_when_its_child_died_is_dead_lettered(tmp_path: Any) -> None:
    app = make_app()
    markers = RunningMarkers(tmp_path)
    # m-1 came back 3 times with a child that died running something else: it runs
    assert admit(app, delivered({"x-delivery-count": 3}, redelivered=True), markers=markers) is None
    # ... but once it was itself running when a child died (its marker is left), it is dead-lettered
    markers.start("m-1")
    limited = admit(app, delivered({"x-delivery-count": 3}, redelivered=True), markers=markers)
    assert limited is not None and limited.reason == Reason.DELIVERY_LIMIT
    markers.done("m-1")
    assert not markers.died_running("m-1") and list(tmp_path.iterdir()) == []


def test_a_redelivery_of_a_run_that_outlived_its_channel_gets_that_runs_outcome() -> None:
    first, again, other = delivered(), delivered(redelivered=True), delivered({"x": 1})
    orphans = Orphans()
    # the redelivery came while the first run went on: the run's end settles the redelivery
    orphans.wait(again)
    settled = orphans.finished(Outcome(first, "t.task", value=7))
    assert settled is not None and settled.message is again and settled.value == 7
    # the first run ended before its redelivery came: the outcome waits for it
    assert orphans.finished(Outcome(first, "t.task", value=8)) is None
    kept = orphans.outcome_for(other)
    assert kept is not None and kept.message is other and kept.value == 8
    assert orphans.outcome_for(other) is None  # used once


def test_classic_redeliveries_are_counted_in_a_header_on_a_republished_copy() -> None:
    app = make_app()
    first = admit(app, delivered(redelivered=True, queue="c", name="t.classic"))
    assert first is not None and first.reason == Reason.REDELIVERED
    assert (
        first.republish is not None
        and first.republish.delay_s == 0.1  # via the 100 ms level: the ack is out before the copy
        and first.republish.headers == {H_DELIVERY_COUNT: 1}
    )
    assert first.copy_headers(first.republish.headers)[H_DELIVERY_COUNT] == 1
    counted = delivered({H_DELIVERY_COUNT: 1}, queue="c", name="t.classic")
    retried = failed(counted, app.tasks["t.classic"], Retry(1), 0.0)
    assert retried.republish is not None and H_DELIVERY_COUNT not in retried.copy_headers(retried.republish.headers)
    last = admit(app, delivered({H_DELIVERY_COUNT: 2}, redelivered=True, queue="c", name="t.classic"))
    assert last is not None and last.reason == Reason.DELIVERY_LIMIT and last.republish is None


def test_a_failure_retries_with_backoff_until_max_retries_then_dead_letters() -> None:
    app = make_app()
    task = app.tasks["t.task"]
    first = failed(delivered(), task, OSError("down"), 0.01)
    assert first.reason == Reason.RETRY and first.republish is not None
    assert first.republish.delay_s == 0.5 and first.republish.headers == {H_ATTEMPT: 2}
    second = failed(delivered({H_ATTEMPT: 2}), task, OSError("down"), 0.01)
    assert second.republish is not None and second.republish.delay_s == 1.0
    last = failed(delivered({H_ATTEMPT: 3}), task, OSError("down"), 0.01)
    assert last.reason == Reason.MAX_RETRIES and last.republish is None and last.exc_type == "OSError"
    not_retried = failed(delivered(), task, ValueError("bug"), 0.01)
    assert not_retried.reason == "task raised" and "ValueError: bug" in not_retried.traceback


def test_an_explicit_retry_takes_its_countdown_and_reports_its_cause() -> None:
    app = make_app()
    task = app.tasks["t.task"]
    cause = KeyError("k")
    outcome = failed(delivered(), task, Retry(3.0, exc=cause), 0.01)
    assert outcome.republish is not None and outcome.republish.delay_s == 3.0 and outcome.exc_type == "KeyError"
    no_more = failed(delivered({H_ATTEMPT: 2}), task, Retry(exc=cause, max_retries=1), 0.01)
    assert no_more.reason == Reason.MAX_RETRIES and no_more.exc_type == "KeyError"


def test_dead_letter_headers_say_why_when_where_and_how_often() -> None:
    app = make_app()
    first_seen = format_time(time.time() - 30)
    outcome = failed(
        delivered({H_ATTEMPT: 3, "rt-first-seen": first_seen, "x-death": [{}], "x-delivery-count": 1}),
        app.tasks["t.task"],
        OSError("down"),
        0.25,
    )
    headers = outcome.copy_headers(outcome.failure_headers("q", 4242))
    assert headers["rt-reason"] == Reason.MAX_RETRIES and headers["rt-exc-type"] == "OSError"
    assert headers["rt-exc-message"] == "down" and "OSError: down" in headers["rt-traceback"]
    assert headers[H_ATTEMPT] == 3 and headers["rt-first-seen"] == first_seen and headers["rt-queue"] == "q"
    assert headers["rt-worker"].endswith(":4242") and parse_time(headers["rt-failed-at"]) is not None
    assert "x-death" not in headers and "x-delivery-count" not in headers
