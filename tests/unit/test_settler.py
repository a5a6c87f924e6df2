"""The Settler without a broker: what each outcome sends, in which order, and when the channel is gone."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiormq.abc import DeliveredMessage
from pamqp import commands
from pamqp.header import ContentHeader

from rabbittask import App, PublishError
from rabbittask.errors import PublishNotConfirmed
from rabbittask.message import Outgoing
from rabbittask.worker.outcome import Outcome, Reason, Republish
from rabbittask.worker.redelivery import Redeliveries
from rabbittask.worker.retirement import Lifecycle, Retirement
from rabbittask.worker.settle import InFlight, Settler

Step = tuple[Any, ...]


class Channel:
    def __init__(self) -> None:
        self.is_closed = False


class Acker:
    """The acker of one channel, writing what it sends to the shared log."""

    def __init__(self, log: list[Step], channel: Channel) -> None:
        self.log, self.channel = log, channel

    @property
    def alive(self) -> bool:
        return not self.channel.is_closed

    def ack(self, tag: int) -> None:
        self.log.append(("ack", tag))

    def reject(self, tag: int, *, requeue: bool) -> None:
        self.log.append(("reject", tag, requeue))

    def hand_back(self, tag: int) -> None:
        self.log.append(("nack", tag, True))

    def hold(self) -> None:
        self.log.append(("hold",))


class Publisher:
    """Records each publish as (exchange or 'tasks', routing key, the `rt-reason` header or record status)."""

    def __init__(self, log: list[Step]) -> None:
        self.log = log
        self.fail: Exception | None = None
        self.fails = 0  # how many publishes fail with `fail` (when set); -1: every one
        self.sent: list[Outgoing] = []
        self.alarm_waits: list[float] = []

    async def publish(self, msg: Outgoing, *, alarm_wait_s: float = 0.0) -> None:
        await asyncio.sleep(0)
        self.alarm_waits.append(alarm_wait_s)
        if self.fail is not None and self.fails:
            self.fails -= 1
            raise self.fail
        self.sent.append(msg)
        what = (msg.headers or {}).get("rt-reason") or json.loads(msg.body).get("status", "")
        where = "delay" if msg.delay_ms else "tasks" if msg.exchange is None else msg.exchange
        self.log.append(("publish", where, msg.routing_key, what))


class Backend:
    def __init__(self, log: list[Step], failures: int = 0) -> None:
        self.log, self.failures = log, failures

    async def astore(self, task_id: str, record: bytes, expires_s: float) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("store down")
        self.log.append(("store", task_id, json.loads(record)["status"]))


class Events:
    def __init__(self) -> None:
        self.recorded: list[Outcome] = []

    def record(self, outcome: Outcome) -> None:
        self.recorded.append(outcome)


class Rig:
    """A settler wired to fakes; `log` is everything sent, in order."""

    def __init__(self, *, max_tasks: int = 0, backend: Backend | None = None) -> None:
        self.app = App("settle", exchange="rt", delivery_limit=3, result_store_timeout_s=0.5)

        @self.app.task(queue="q", name="t.task")
        def task() -> None: ...

        self.log: list[Step] = []
        self.channel = Channel()
        self.publisher = Publisher(self.log)
        self.flight = InFlight()
        self.retirement = Retirement(max_tasks)
        self.retirement.prefetch(1)
        self.lifecycle = Lifecycle()
        self.events = Events()
        self.limits: list[int] = []
        self.redeliveries = Redeliveries(self.app, settle=lambda o: self.settler.settle(o), running_here=list)
        self.settler = Settler(
            self.app,
            self.publisher,  # type: ignore[arg-type]
            flight=self.flight,
            retirement=self.retirement,
            lifecycle=self.lifecycle,
            redeliveries=self.redeliveries,
            on_limit=lambda: self.log.append(("limit",)),
            events=self.events,  # type: ignore[arg-type]
        )
        self.settler.backend = backend  # type: ignore[assignment]
        self.settler.acker = Acker(self.log, self.channel)  # type: ignore[assignment]

    def delivered(
        self, tag: int = 1, *, reply_to: str | None = None, channel: Channel | None = None, redelivered: bool = False
    ) -> DeliveredMessage:
        props = commands.Basic.Properties(message_id=f"m-{tag}", message_type="t.task", reply_to=reply_to)
        deliver = commands.Basic.Deliver("ctag", tag, redelivered, "rt", "q")
        header = ContentHeader(properties=props)
        return DeliveredMessage(deliver, header, b'{"args":[],"kwargs":{}}', channel or self.channel)  # type: ignore[arg-type]

    async def settle(self, outcome: Outcome) -> list[Step]:
        """Count the message in flight (as its delivery did), settle it, wait until it is settled for good."""
        self.flight.add()
        self.settler.settle(outcome)
        await asyncio.wait_for(self.flight.idle.wait(), 2.0)
        return self.log


def failed(message: DeliveredMessage, reason: Reason) -> Outcome:
    republish = Republish(2.0, {"rt-attempt": 2}) if reason.settlement.value == "republish" else None
    return Outcome(message, "t.task", reason=reason, exc_type="ValueError", exc_message="bad", republish=republish)


DEAD_LETTERED = "dead-lettered"
REPUBLISHED = "republished"
# What each reason sends, written out here rather than read from the enum: a new Reason must be added.
EXPECTED: dict[Reason, str] = {
    Reason.FAILED: DEAD_LETTERED,
    Reason.REJECTED: DEAD_LETTERED,
    Reason.NOT_SERIALISABLE: DEAD_LETTERED,
    Reason.MAX_RETRIES: DEAD_LETTERED,
    Reason.TIME_LIMIT: DEAD_LETTERED,
    Reason.SOFT_TIME_LIMIT: DEAD_LETTERED,
    Reason.TERMINATED: DEAD_LETTERED,
    Reason.REVOKED: DEAD_LETTERED,
    Reason.MALFORMED: DEAD_LETTERED,
    Reason.UNKNOWN: DEAD_LETTERED,
    Reason.INVALID: DEAD_LETTERED,
    Reason.SIGNATURE: DEAD_LETTERED,
    Reason.NOT_ACCEPTED: DEAD_LETTERED,
    Reason.EXPIRED: DEAD_LETTERED,
    Reason.DELIVERY_LIMIT: DEAD_LETTERED,
    Reason.RETRY: REPUBLISHED,
    Reason.NOT_DUE: REPUBLISHED,
    Reason.REDELIVERED: REPUBLISHED,
    Reason.DUPLICATE: "acked",
    Reason.STALE: "nothing",
    Reason.HANDED_BACK: "requeued",
}


def test_every_reason_has_an_expected_settlement() -> None:
    assert set(EXPECTED) == set(Reason)


async def test_a_success_is_acked_and_nothing_is_published() -> None:
    rig = Rig()
    assert await rig.settle(Outcome(rig.delivered(7), "t.task", value=1)) == [("ack", 7)]
    assert rig.flight.count == 0 and rig.retirement.tasks_done == 1 and len(rig.events.recorded) == 1


@pytest.mark.parametrize("reason", list(Reason), ids=lambda r: r.name)
async def test_each_reason_settles_as_it_says(reason: Reason) -> None:
    rig = Rig()
    steps = await rig.settle(failed(rig.delivered(3), reason))
    expected: dict[str, list[Step]] = {
        # the copy is confirmed before the original is acked
        DEAD_LETTERED: [("publish", "rt.dlx", "q", reason.value), ("ack", 3)],
        REPUBLISHED: [("publish", "delay", "q", ""), ("ack", 3)],
        "acked": [("ack", 3)],  # a copy of it ran: acked unrun
        "nothing": [],  # its channel closed before it started: the broker has it back
        "requeued": [("nack", 3, True)],  # nack: from RabbitMQ 4.3 not charged to the delivery limit
    }
    assert steps == expected[EXPECTED[reason]]
    assert rig.flight.count == 0 and rig.flight.idle.is_set()
    counted = reason is not Reason.HANDED_BACK  # handed back: never started, not a task done
    assert rig.retirement.tasks_done == (1 if counted else 0)
    assert len(rig.events.recorded) == (1 if counted and reason is not Reason.STALE else 0)


async def test_a_dead_letter_carries_the_reason_headers_and_a_retry_copy_drops_the_death_headers() -> None:
    rig = Rig()
    await rig.settle(failed(rig.delivered(1), Reason.MAX_RETRIES))
    [dead] = rig.publisher.sent
    assert dead.headers is not None and dead.headers["rt-reason"] == "max retries exceeded"
    assert type(dead.headers["rt-reason"]) is str and dead.headers["rt-queue"] == "q"
    await rig.settle(failed(rig.delivered(2), Reason.RETRY))
    retry = rig.publisher.sent[1]
    assert retry.delay_ms == 2000 and retry.headers is not None and retry.headers["rt-attempt"] == 2


@pytest.mark.parametrize("reason", [Reason.FAILED, Reason.RETRY], ids=lambda r: r.name)
async def test_a_copy_not_confirmed_is_sent_again_with_the_same_id_marked_resent(reason: Reason) -> None:
    # Given a publisher whose first publish fails (no confirm: the copy may or may not be enqueued)
    rig = Rig()
    rig.publisher.fail, rig.publisher.fails = PublishNotConfirmed("no confirm"), 1
    # When the outcome settles
    steps = await rig.settle(failed(rig.delivered(4), reason))
    # Then the copy goes again, with the same id, marked re-sent, and the original is acked after it
    assert [step[0] for step in steps] == ["publish", "ack"]
    [copy] = rig.publisher.sent
    assert copy.message_id == "m-4" and copy.headers is not None and copy.headers["rt-resent"] == 1
    assert rig.publisher.alarm_waits == [rig.app.settings.alarm_wait_s] * 2  # both outlast a resource alarm
    assert rig.flight.count == 0


@pytest.mark.parametrize("reason", [Reason.FAILED, Reason.RETRY], ids=lambda r: r.name)
async def test_a_copy_that_cannot_be_published_sends_the_original_back_never_to_the_dead_letters(
    reason: Reason,
) -> None:
    rig = Rig()
    rig.publisher.fail, rig.publisher.fails = PublishError("no confirm"), -1
    # requeued: it runs again; never rejected for the broker to dead-letter without a reason (or after it ran)
    assert await rig.settle(failed(rig.delivered(4), reason)) == [("reject", 4, True)]
    assert rig.flight.count == 0


async def test_a_reply_is_published_before_the_ack_and_a_lost_reply_does_not_stop_it() -> None:
    rig = Rig()
    assert await rig.settle(Outcome(rig.delivered(5, reply_to="amq.rabbitmq.reply-to.x"), "t.task", value=2)) == [
        ("publish", "", "amq.rabbitmq.reply-to.x", "SUCCESS"),
        ("ack", 5),
    ]
    rig.log.clear()
    rig.publisher.fail, rig.publisher.fails = PublishNotConfirmed("caller gone"), -1
    assert await rig.settle(Outcome(rig.delivered(6, reply_to="gone"), "t.task", value=2)) == [("ack", 6)]


async def test_a_result_that_is_not_json_fails_the_task_replied_and_dead_lettered() -> None:
    rig = Rig()
    steps = await rig.settle(Outcome(rig.delivered(8, reply_to="caller"), "t.task", value=object()))
    assert steps == [
        ("publish", "", "caller", "FAILURE"),
        ("publish", "rt.dlx", "q", "result not JSON-serialisable"),
        ("ack", 8),
    ]


async def test_a_result_is_stored_before_the_ack_and_one_that_cannot_be_stored_goes_back() -> None:
    rig = Rig(backend=Backend([], failures=1))
    rig.settler.backend.log = rig.log  # type: ignore[union-attr]
    assert await rig.settle(Outcome(rig.delivered(9), "t.task", value=3)) == [("store", "m-9", "SUCCESS"), ("ack", 9)]
    rig.log.clear()
    rig.settler.backend.failures = 100  # type: ignore[union-attr]
    assert await rig.settle(Outcome(rig.delivered(10), "t.task", value=3)) == [("reject", 10, True)]


async def test_with_the_channel_gone_nothing_is_sent_and_the_redelivery_gets_the_outcome() -> None:
    # Given a run that finished after its channel closed
    rig = Rig()
    old = Channel()
    old.is_closed = True
    first = rig.delivered(11, channel=old)
    # When it settles: nothing is acked or published (its tag means nothing on the new channel)
    assert await rig.settle(Outcome(first, "t.task", value=4)) == []
    # Then its redelivery on the new channel is acked with that outcome, not run again
    again = rig.delivered(2, redelivered=True)
    again.header.properties.message_id = "m-11"
    rig.flight.add()
    assert not rig.redeliveries.admit(again)
    await asyncio.wait_for(rig.flight.idle.wait(), 2.0)
    assert rig.log == [("ack", 2)] and rig.events.recorded[-1].value == 4


async def test_with_no_channel_at_all_a_failure_is_not_dead_lettered_twice() -> None:
    rig = Rig()
    rig.settler.acker = None
    assert await rig.settle(failed(rig.delivered(12), Reason.FAILED)) == []
    assert rig.publisher.sent == []  # the broker redelivers it; its next run decides


async def test_a_limit_is_looked_at_before_the_ack_it_may_hold_back() -> None:
    rig = Rig(max_tasks=1)
    assert await rig.settle(Outcome(rig.delivered(13), "t.task")) == [("limit",), ("ack", 13)]


async def test_handing_back_nacks_with_requeue_only_on_its_own_channel() -> None:
    rig = Rig()
    rig.flight.add()
    rig.settler.hand_back(rig.delivered(14))
    other = Channel()
    rig.flight.add()
    rig.settler.hand_back(rig.delivered(15, channel=other))
    assert rig.log == [("nack", 14, True)] and rig.flight.count == 0
