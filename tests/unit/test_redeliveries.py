"""Redeliveries without a broker: what is run, what is settled unrun, what waits for a run still going here."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiormq.abc import DeliveredMessage
from pamqp import commands
from pamqp.header import ContentHeader

from rabbittask import App
from rabbittask.message import H_ETA, H_EXPIRES, format_time
from rabbittask.worker.outcome import Outcome, Reason
from rabbittask.worker.redelivery import KEEP_OUTCOMES, Orphans, Redeliveries
from rabbittask.worker.running import RunningMarkers

OLD, NEW = SimpleNamespace(name="old channel"), SimpleNamespace(name="new channel")


def delivered(
    mid: str = "m-1", headers: dict[str, Any] | None = None, *, redelivered: bool = False, channel: Any = NEW
) -> DeliveredMessage:
    props = commands.Basic.Properties(message_id=mid, message_type="t.task", headers=headers)
    deliver = commands.Basic.Deliver("ctag", 1, redelivered, "rabbittask", "q")
    return DeliveredMessage(deliver, ContentHeader(properties=props), b"{}", channel)


class Rig:
    def __init__(self, markers: RunningMarkers | None = None) -> None:
        self.app = App("redeliveries", delivery_limit=3)

        @self.app.task(queue="q", name="t.task")
        def task() -> None: ...

        self.settled: list[Outcome] = []
        self.running: list[DeliveredMessage] = []
        self.redeliveries = Redeliveries(self.app, self.settled.append, lambda: self.running, markers)


def test_a_first_delivery_runs_and_leaves_no_trace(tmp_path: Path) -> None:
    rig = Rig(RunningMarkers(tmp_path))
    assert rig.redeliveries.admit(delivered(headers={"x-delivery-count": 0}))
    assert rig.settled == [] and rig.redeliveries.marked == set() and list(tmp_path.iterdir()) == []


def test_expired_and_not_yet_due_messages_are_settled_unrun() -> None:
    rig = Rig()
    now = time.time()
    assert not rig.redeliveries.admit(delivered("a", {H_EXPIRES: format_time(now - 1)}))
    assert not rig.redeliveries.admit(delivered("b", {H_ETA: format_time(now + 60)}))
    assert rig.redeliveries.admit(delivered("c", {H_EXPIRES: format_time(now + 60)}))
    assert [(o.message_id, o.reason) for o in rig.settled] == [("a", Reason.EXPIRED), ("b", Reason.NOT_DUE)]
    assert rig.settled[1].republish is not None and 59 < rig.settled[1].republish.delay_s <= 60


@pytest.mark.parametrize(
    ("header", "value", "said"),
    [
        (H_EXPIRES, "1733580000", "epoch seconds must be sent as an AMQP number, not as text"),
        (H_EXPIRES, b"1733580000.5", "epoch seconds must be sent as an AMQP number, not as text"),
        (H_EXPIRES, "not-a-date", "header rt-expires 'not-a-date' (str) cannot be read as a time"),
        (H_EXPIRES, {"at": 1}, "(dict) cannot be read as a time"),
        (H_EXPIRES, [1, 2], "(list) cannot be read as a time"),
        (H_EXPIRES, True, "(bool) cannot be read as a time"),
        (H_EXPIRES, float("nan"), "(float) cannot be read as a time"),
        (H_EXPIRES, 10**400, "(int) cannot be read as a time"),
        (H_EXPIRES, "0001-01-01T00:00:00+01:00", "cannot be read as a time"),
        (H_ETA, "tomorrow", "header rt-eta 'tomorrow' (str) cannot be read as a time"),
    ],
)
def test_a_deadline_or_due_time_that_cannot_be_read_dead_letters_the_message_unrun(
    header: str, value: object, said: str
) -> None:
    # A deadline nobody can read must not fail open (the task would run late), nor a due time (it would run early)
    rig = Rig()
    assert not rig.redeliveries.admit(delivered("a", {header: value}))
    (outcome,) = rig.settled
    assert outcome.reason is Reason.MALFORMED and not outcome.reason.ran
    assert said in outcome.exc_message and "the message was not run" in outcome.exc_message


def test_a_deadline_given_as_a_number_or_an_amqp_timestamp_is_read() -> None:
    rig = Rig()
    now = time.time()
    past = datetime.fromtimestamp(now - 5, UTC)
    for mid, value in [("n", now - 5), ("i", int(now) - 5), ("d", Decimal(int(now) - 5)), ("t", past)]:
        assert not rig.redeliveries.admit(delivered(mid, {H_EXPIRES: value}))
    assert [o.reason for o in rig.settled] == [Reason.EXPIRED] * 4
    assert rig.redeliveries.admit(delivered("void", {H_EXPIRES: None}))  # an AMQP void: no deadline


def test_an_admitted_redelivery_is_marked_while_it_runs_and_forgotten_once_settled(tmp_path: Path) -> None:
    markers = RunningMarkers(tmp_path)
    rig = Rig(markers)
    message = delivered(headers={"x-delivery-count": 1}, redelivered=True)
    assert rig.redeliveries.admit(message) and rig.redeliveries.marked == {"m-1"}
    # the run leaves a marker until it ends: a child killed meanwhile died running it
    marked = rig.redeliveries.start(message)
    assert marked == "m-1" and markers.died_running("m-1")
    rig.redeliveries.ended(marked)
    assert not markers.died_running("m-1")
    rig.redeliveries.settled(message)
    assert rig.redeliveries.marked == set() and list(tmp_path.iterdir()) == []


def test_at_the_limit_a_message_that_died_running_is_dead_lettered_and_its_marker_removed(tmp_path: Path) -> None:
    markers = RunningMarkers(tmp_path)
    rig = Rig(markers)
    markers.start("m-1")  # a child died running it
    assert not rig.redeliveries.admit(delivered(headers={"x-delivery-count": 3}, redelivered=True))
    assert [o.reason for o in rig.settled] == [Reason.DELIVERY_LIMIT]
    assert list(tmp_path.iterdir()) == [] and rig.redeliveries.marked == set()


def test_a_redelivery_of_a_message_still_running_here_waits_for_that_run() -> None:
    # Given a run on the old channel, which the broker closed and requeued
    rig = Rig()
    first = delivered(channel=OLD)
    rig.running.append(first)
    # When the message comes back on the new channel
    again = delivered(redelivered=True)
    # Then it is not run twice; when the run ends, its outcome is the redelivery's
    assert not rig.redeliveries.admit(again)
    assert rig.settled == []
    settled = rig.redeliveries.orphaned(Outcome(first, "t.task", value=7))
    assert settled is not None and settled.message is again and settled.value == 7


def test_a_redelivery_of_a_message_that_finished_here_is_settled_with_that_outcome() -> None:
    rig = Rig()
    assert rig.redeliveries.orphaned(Outcome(delivered(channel=OLD), "t.task", value=8)) is None  # kept
    again = delivered(redelivered=True)
    assert not rig.redeliveries.admit(again)
    [outcome] = rig.settled
    assert outcome.message is again and outcome.value == 8
    assert rig.redeliveries.admit(delivered(redelivered=True))  # used once: a later redelivery runs


def test_a_redelivery_on_the_same_channel_or_without_an_id_runs() -> None:
    rig = Rig()
    rig.running.append(delivered(channel=NEW))
    assert rig.redeliveries.admit(delivered(redelivered=True, channel=NEW))
    assert rig.redeliveries.orphaned(Outcome(delivered("", channel=OLD), "t.task")) is None
    assert rig.settled == []


def test_orphaned_outcomes_are_kept_for_a_bounded_number_of_runs() -> None:
    orphans = Orphans()
    for i in range(KEEP_OUTCOMES + 1):
        orphans.finished(Outcome(delivered(f"m{i}"), "t.task", value=i))
    assert orphans.outcome_for(delivered("m0")) is None  # the oldest went first
    kept = orphans.outcome_for(delivered(f"m{KEEP_OUTCOMES}"))
    assert kept is not None and kept.value == KEEP_OUTCOMES
