"""Settling a delivery, in one place: every ack and reject of a worker child goes through the `Settler`.

What an outcome's `Reason` asks for (its `Settlement`), in order:

* success: ack; with a `reply_to` or a result backend, the reply is published and the result stored
  first (an acked task never lacks its result; one that cannot be stored goes back to the queue);
* DEAD_LETTER: a copy with the `rt-*` reason headers to the dead-letter exchange, confirmed, then ack;
* REPUBLISH: a copy back to the task queue through the delay ladder, confirmed, then ack;
* REQUEUE: nack with requeue (it never started: a warm shutdown hands it back; 4.3 does not count a nack);
* FORGET: nothing (its channel closed before it started; the broker has it back already);
* ACK: ack unrun (a duplicate: a copy with its id and attempt ran within the task's `dedupe_s`).

A copy is never given up while its fate is unknown: the publisher waits out a memory or disk alarm
(`alarm_wait_s`, the original held unacked), a copy still unconfirmed is sent once more with the same
id (marked `rt-resent`), and only then does the original go back to its queue to run again. So a
task is never both run and dead-lettered, and every dead letter carries its `rt-*` reason. When
the channel a message came on is gone, its tag means nothing on the new one: the outcome is kept
for its redelivery (see redelivery.py, `Orphans`). Publishing goes over a second connection,
because a memory alarm blocks a publishing connection and would stop its acks too.

`InFlight` counts what a child holds unsettled: up on delivery, down only here.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from aiormq.abc import DeliveredMessage

from rabbittask.amqp.connect import CONNECTION_ERRORS
from rabbittask.celery.delivery import CeleryDelivery
from rabbittask.celery.finish import CeleryFinish
from rabbittask.errors import PublishError, PublishNotConfirmed, ResultNotSerialisable
from rabbittask.message import H_ATTEMPT, Outgoing, resent
from rabbittask.publish.aio import AsyncPublisher
from rabbittask.results.record import encode_failure, encode_success
from rabbittask.retry import schedule_headers
from rabbittask.topology import dlq_name, dlx_name
from rabbittask.worker import tasklog
from rabbittask.worker.acks import Acker, delivery_tag
from rabbittask.worker.execute import source_queue
from rabbittask.worker.followup import Followup, is_workflow
from rabbittask.worker.outcome import Outcome, Reason, Settlement
from rabbittask.worker.reports import Reports
from rabbittask.workflow.wire import join_queue_name

if TYPE_CHECKING:
    from rabbittask.app import App
    from rabbittask.results.backend import ResultBackend
    from rabbittask.worker.events import Events
    from rabbittask.worker.inplace import InPlaceRetries
    from rabbittask.worker.prefetch import AdaptivePrefetch
    from rabbittask.worker.redelivery import Redeliveries
    from rabbittask.worker.retirement import Lifecycle, Retirement

log = logging.getLogger(__name__)

PUBLISH_ERRORS: tuple[type[Exception], ...] = (PublishError, *CONNECTION_ERRORS)


class InFlight:
    """Messages a child holds unsettled (running, waiting for a thread, or waiting for a confirm)."""

    __slots__ = ("count", "idle")

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def add(self) -> None:
        self.count += 1
        self.idle.clear()

    def done(self) -> None:
        self.count -= 1
        if self.count <= 0:
            self.idle.set()


class Settler:
    """Acks, rejects, replies, stores, republishes and dead-letters; `acker` is the current channel's."""

    def __init__(
        self,
        app: App,
        publisher: AsyncPublisher,
        *,
        flight: InFlight,
        retirement: Retirement,
        lifecycle: Lifecycle,
        redeliveries: Redeliveries,
        on_limit: Callable[[], None],
        events: Events | None = None,
    ) -> None:
        self.app = app
        self.publisher = publisher
        self.backend: ResultBackend | None = app.backend  # loaded now: a bad result_backend URL stops the worker
        self.flight = flight
        self.retirement = retirement
        self.lifecycle = lifecycle
        self.redeliveries = redeliveries
        self.on_limit = on_limit  # a limit needs a look (before this settle's ack, which it may hold back)
        self.events = events
        self.acker: Acker | None = None  # set by the session while its channel is open
        join_queue = join_queue_name(app.settings.exchange, app.settings.join_queue)
        self.reports = Reports(join_queue, app.settings.max_payload_bytes, self._confirmed_record)
        self.followup = Followup(app, self.reports)  # a workflow's next step or chord report, before the ack
        self.in_place: InPlaceRetries | None = None  # set by the child when a task it runs retries in place
        self.adaptive: AdaptivePrefetch | None = None  # sees each run time, unless the prefetch is pinned
        self.log_successes = tasklog.enabled()  # asked once: a quiet drain pays no call per success
        self.successes = tasklog.Successes()  # with INFO on: one log record per loop turn
        self._background: set[asyncio.Task[None]] = set()
        # Results and next steps of Celery messages (celery/finish.py); None: the app has no Celery queue.
        self.celery = CeleryFinish(app, publisher) if any(q.celery for q in app.queues.values()) else None

    def settle(self, outcome: Outcome) -> None:
        """Settle the message of `outcome` as its reason says (the hot path: a success acked in a batch)."""
        reason = outcome.reason
        forget = False
        if reason is not None:  # on success no Reason is looked at: a class attribute of an enum costs 0.1 µs
            if reason.settlement is Settlement.REQUEUE:
                self.hand_back(outcome.message)
                return
            forget = reason.settlement is Settlement.FORGET
        elif self.log_successes:
            self.successes.add(outcome)
        adaptive = self.adaptive
        if adaptive is not None:
            adaptive.observe(outcome.runtime_s)
        events = self.events
        if events is not None and not forget:
            events.record(outcome)
        if self.retirement.settled():
            self.on_limit()
        message = outcome.message
        if self.redeliveries.marked:
            self.redeliveries.settled(message)
        if reason is Reason.RETRY and self.in_place is not None and self.in_place.take(outcome):
            return  # still held: it runs again here after its back-off (inplace.py)
        acker = self.acker
        if forget:
            pass
        elif acker is None or message.channel is not acker.channel or not acker.alive:
            self._orphaned(outcome)
        elif self._acks_at_once(outcome):
            acker.ack(delivery_tag(message))
        else:
            self._spawn(self._publish_then_ack(acker, outcome))
            return  # in flight until the copy, reply or result is confirmed and the message acked
        self.flight.done()

    def _acks_at_once(self, outcome: Outcome) -> bool:
        """Whether the ack needs nothing confirmed first: no reply, result, copy, next step or Celery work."""
        reason, message = outcome.reason, outcome.message
        if reason is not None:
            return reason.settlement is Settlement.ACK
        return (
            not message.header.properties.reply_to
            and (self.backend is None or not self._stores(outcome))
            and not is_workflow(message)
            and (self.celery is None or not self.celery.has_work(outcome))
        )

    def hand_back(self, message: DeliveredMessage) -> None:
        """Return a message that never started to its queue (warm shutdown): nack it with requeue (acks.py)."""
        acker = self.acker
        if acker is not None and message.channel is acker.channel and acker.alive:
            acker.hand_back(delivery_tag(message))
        self.flight.done()

    def _orphaned(self, outcome: Outcome) -> None:
        redelivery = self.redeliveries.orphaned(outcome)
        if redelivery is None:
            log.info(
                "task %s [%s] finished after its channel closed; the broker redelivers it",
                outcome.task_name,
                outcome.message_id,
            )
        else:
            self.settle(redelivery)  # its redelivery waited for this run: settled on the new channel

    def _stores(self, outcome: Outcome) -> bool:
        """True when the outcome goes to the result backend (the app has one, the task keeps results)."""
        if self.backend is None:
            return False
        task = self.app.tasks.get(outcome.task_name)
        return task is None or not task.ignore_result

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _publish_then_ack(self, acker: Acker, outcome: Outcome) -> None:
        tag = delivery_tag(outcome.message)
        reply_to = outcome.message.header.properties.reply_to
        republish = outcome.reason is not None and outcome.reason.settlement is Settlement.REPUBLISH
        stores = self._stores(outcome)
        try:
            if republish:  # a retry (or a re-park): the copy is confirmed before the ack
                sent = await self._confirmed(outcome, self._copy(outcome), "copy")  # no reply, no stored result
            elif self.celery is not None and type(outcome.message) is CeleryDelivery:  # Celery's result, next steps
                outcome, sent = await self.celery.finish(outcome, self._confirmed)
                if sent and not outcome.ok:
                    sent = await self._confirmed(outcome, self._dead_letter(outcome), "dead letter")
            else:
                sent = await self._finish(outcome, reply_to, stores)
            if acker.alive:
                if sent:
                    acker.ack(tag)
                else:  # run again rather than dead-lettered by the broker without a reason, or lost
                    acker.reject(tag, requeue=True)
        finally:
            self.flight.done()

    async def _finish(self, outcome: Outcome, reply_to: str | None, stores: bool) -> bool:
        """Before the ack of a run: its reply, stored result or dead letter, and a workflow's next messages."""
        sent = True
        record = b""
        plan = None
        if is_workflow(outcome.message):  # the next step or the chord record (followup.py)
            outcome, plan = self.followup.plan(outcome)
        if reply_to or stores:
            outcome, record = self._record(outcome)
        if reply_to and (plan is None or not plan.continues):  # a next step answers instead
            await self._reply(outcome, record)
        if stores and not await self._store(outcome, record):
            sent = False
        elif not outcome.ok:
            sent = await self._confirmed(outcome, self._dead_letter(outcome), "dead letter")
        if plan is not None and sent:
            for msg in plan.messages:
                sent = sent and await self._confirmed(outcome, msg, plan.what)
            if plan.report is not None and sent:
                sent = await self.reports.report(*plan.report)
        return sent

    async def _confirmed(self, outcome: Outcome, msg: Outgoing, what: str) -> bool:
        """Publish `msg` (a retry's copy or a dead letter) until confirmed; False if it could not be.

        Never give up on a copy whose fate is unknown and let the broker dead-letter the original: the
        copy may be enqueued and run, and the dead letter would lack its reason. The publisher waits out
        a resource alarm (`alarm_wait_s`); a copy still not confirmed is sent once more with the same id,
        marked `rt-resent`, and when that fails too the original goes back to its queue.
        """
        return await self._publish_confirmed(
            msg,
            lambda e, again: log.warning(
                "task %s [%s]: its %s was not confirmed (%s); %s",
                outcome.task_name,
                outcome.message_id,
                what,
                e,
                "re-sending it with the same id" if again else "the message goes back to its queue",
            ),
        )

    async def _confirmed_record(self, msg: Outgoing) -> bool:
        """Publish chord members' reports until confirmed (as `_confirmed`); False: the members run again."""
        return await self._publish_confirmed(
            msg, lambda e, again: log.warning("chord reports %s were not confirmed (%s)", msg.message_id, e)
        )

    async def _publish_confirmed(self, msg: Outgoing, on_failure: Callable[[BaseException, bool], None]) -> bool:
        """Publish `msg`, waiting out an alarm; once more with the same id (`rt-resent`); False if neither confirmed."""
        wait_s = self.app.settings.alarm_wait_s
        for attempt in (1, 2):
            try:
                await self.publisher.publish(msg if attempt == 1 else resent(msg), alarm_wait_s=wait_s)
                return True
            except PUBLISH_ERRORS as e:
                on_failure(e, attempt == 1)
        return False

    def _copy(self, outcome: Outcome) -> Outgoing:
        """The copy of a retried (or re-parked) message, back to its task queue through the delay ladder."""
        republish = outcome.republish
        assert republish is not None, f"{outcome.reason} comes with a Republish"
        props = outcome.message.header.properties
        if outcome.reason is Reason.RETRY:
            self.successes.flush()  # the success lines before it come first
            tasklog.retried(outcome, republish.headers.get(H_ATTEMPT, "?"), republish.delay_s)
        else:
            log.info("task %s [%s] re-published (%s)", outcome.task_name, outcome.message_id, outcome.reason)
        delay_ms = math.ceil(republish.delay_s * 1000)
        extra = schedule_headers(delay_ms, None, time.time())  # rt-eta again if beyond one ladder pass
        if type(outcome.message) is CeleryDelivery and H_ATTEMPT in republish.headers:
            extra["retries"] = republish.headers[H_ATTEMPT] - 1  # what a Celery worker taking the copy reads
        return Outgoing(
            routing_key=source_queue(self.app, outcome.message),
            body=outcome.message.body,
            message_id=outcome.message_id,
            task_name=outcome.task_name,
            priority=props.priority,
            headers=outcome.copy_headers({**republish.headers, **extra}),
            reply_to=props.reply_to,
            correlation_id=props.correlation_id,
            content_type=props.content_type or "",
            delay_ms=delay_ms,
        )

    def _dead_letter(self, outcome: Outcome) -> Outgoing:
        """The dead letter of a failed message: its body with the `rt-*` reason headers, to the dead-letter exchange."""
        props = outcome.message.header.properties
        queue_name = source_queue(self.app, outcome.message)
        self.successes.flush()  # the success lines before it come first
        tasklog.dead_lettered(outcome, dlq_name(queue_name))
        headers = outcome.copy_headers(outcome.failure_headers(queue_name, os.getpid()))
        return Outgoing(
            routing_key=queue_name,
            body=outcome.message.body,
            message_id=outcome.message_id,
            task_name=outcome.task_name,
            priority=props.priority,
            headers=headers,
            correlation_id=props.correlation_id,
            content_type=props.content_type or "",
            exchange=dlx_name(self.app.settings.exchange),
        )

    @staticmethod
    def _record(outcome: Outcome) -> tuple[Outcome, bytes]:
        """The result record for the reply and the backend; a result that is not JSON fails the task."""
        if outcome.ok:
            try:
                return outcome, encode_success(outcome.task_name, outcome.value)
            except ResultNotSerialisable as e:
                outcome = outcome._replace(reason=Reason.NOT_SERIALISABLE, exc_type="TypeError", exc_message=str(e))
        reason = outcome.reason.value if outcome.reason is not None else ""
        record = encode_failure(outcome.task_name, outcome.exc_type, outcome.exc_message, outcome.traceback, reason)
        return outcome, record

    async def _reply(self, outcome: Outcome, record: bytes) -> None:
        props = outcome.message.header.properties
        try:
            await self.publisher.publish(
                Outgoing(
                    routing_key=props.reply_to or "",
                    body=record,
                    message_id=outcome.message_id,
                    task_name=outcome.task_name,
                    correlation_id=props.correlation_id or outcome.message_id,
                    exchange="",
                    # Not mandatory: RabbitMQ 3.x returns every direct reply as unroutable although it
                    # delivered it. A reply to a caller that is gone is dropped by the broker, silently.
                    mandatory=False,
                )
            )
        except PublishNotConfirmed as e:  # nacked: the caller may be gone; the task still ran
            log.debug("task %s [%s]: reply not confirmed: %s", outcome.task_name, outcome.message_id, e)
        except PUBLISH_ERRORS as e:
            log.warning("task %s [%s]: reply not delivered: %s", outcome.task_name, outcome.message_id, e)

    async def _store(self, outcome: Outcome, record: bytes) -> bool:
        """Store the result, retrying for `result_store_timeout_s`; False when it could not be stored."""
        assert self.backend is not None
        settings = self.app.settings
        deadline, pause_s = time.monotonic() + settings.result_store_timeout_s, 0.1
        while True:
            try:
                await self.backend.astore(outcome.message_id, record, settings.result_expires_s)
                return True
            except Exception as e:  # noqa: BLE001 - any plugin failure: the message must not be acked
                if time.monotonic() + pause_s > deadline or not self.lifecycle.running:
                    log.error(
                        "task %s [%s]: its result could not be stored (%s); the message goes back to the queue",
                        outcome.task_name,
                        outcome.message_id,
                        e,
                    )
                    return False
                log.warning(
                    "task %s [%s]: storing its result failed (%s); retrying in %.1f s",
                    outcome.task_name,
                    outcome.message_id,
                    e,
                    pause_s,
                )
                await asyncio.sleep(pause_s)
                pause_s = min(pause_s * 2, 2.0)
