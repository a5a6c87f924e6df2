"""A worker child: one consuming connection, per-consumer prefetch, late acks, wired from named stages.

A message walks through them in order (`_on_message`):

    session (session.py)        delivered on the current channel; counted in flight
    celery (celery/delivery.py) on a Celery queue, a Celery message's headers read into the properties below
    redelivery (redelivery.py)  expired, not due, delivered too often, or a run this child already has?
    revoke (revoke.py)          revoked (the `<exchange>.revoked` stream, control.py)? dead-lettered unrun;
                                while the control connection is down, it waits until they are read again
    rate (rates.py)             a rate-limited task waits for a token (unacked, in its own asyncio task)
    dispatch (dispatch.py)      async task: run on the loop; sync task: inline (inline.py) or a thread (threads.py)
    (retry in place)            a `partition_by` task's retry waits here and runs again (inplace.py)
    outcome (outcome.py)        what happened, and the `Reason` if it did not simply succeed
    settle (settle.py)          ack, reply / store then ack, republish or dead-letter then ack, hand back

`retirement.py` holds the one lifecycle `State` and the limits that end a child (max tasks, memory,
a hard time limit); the supervisor hears of a retirement through `on_retire` and starts the
successor before this child is done. `control.py` answers the control plane's broadcasts and follows
revocations on a connection of its own. A new feature is one more stage or one more `Reason`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from aiormq.abc import DeliveredMessage

from rabbittask import progress
from rabbittask.celery.delivery import translate
from rabbittask.celery.protocol import is_celery
from rabbittask.control.local import Run
from rabbittask.publish.aio import AsyncPublisher
from rabbittask.worker.acks import delivery_tag
from rabbittask.worker.control import ControlPlane
from rabbittask.worker.dedupe import Dedupe
from rabbittask.worker.dispatch import Dispatcher
from rabbittask.worker.events import Events
from rabbittask.worker.exits import EXIT_OK
from rabbittask.worker.inline import InlinePolicy, InlineRunner
from rabbittask.worker.inplace import InPlaceRetries
from rabbittask.worker.joiner import Joiner
from rabbittask.worker.metrics import TaskMetrics
from rabbittask.worker.outcome import Outcome, Reason
from rabbittask.worker.pool import BUSY, IDLE, WORKING
from rabbittask.worker.prefetch import AdaptivePrefetch, adaptive_allowed
from rabbittask.worker.rates import RateGate
from rabbittask.worker.redelivery import Redeliveries
from rabbittask.worker.retirement import BUDGET_IDLE_S, Lifecycle, Retirement
from rabbittask.worker.revoke import RevokeStage
from rabbittask.worker.running import RunningMarkers
from rabbittask.worker.session import Session
from rabbittask.worker.settle import InFlight, Settler
from rabbittask.worker.threads import TaskThreads

if TYPE_CHECKING:
    from rabbittask.app import App

log = logging.getLogger(__name__)

INLINE_MAX_S = 0.001  # sync tasks whose runs all finish within this run on the loop's thread (see inline.py)


class Child:
    """Consumes `queues` of `app` until stopped; `run()` returns the process exit code.

    `queues` must be queues of the app (`queues_to_consume` in cli/worker.py checks); empty means all of them.
    """

    def __init__(
        self,
        app: App,
        queues: Sequence[str],
        *,
        prefetch: int | None = None,
        threads: int = 1,
        shutdown_timeout_s: float = 30.0,
        max_tasks: int = 0,
        max_memory_bytes: int = 0,
        on_ready: Callable[[], None] | None = None,
        on_retire: Callable[[str], None] | None = None,
        on_consuming: Callable[[bool], None] | None = None,
        metrics: bool = False,
        inline_max_s: float = INLINE_MAX_S,
        running_markers: RunningMarkers | None = None,
        partition_slot: tuple[int, int] = (0, 1),
        on_pool: Callable[[bytes], None] | None = None,
        consumer_timeouts: Mapping[str, float] | None = None,
    ) -> None:
        self.app = app
        self.queues = list(queues) or sorted(app.queues)
        self.max_tasks = max_tasks
        self.shutdown_timeout_s = shutdown_timeout_s
        self.on_retire = on_retire
        # Queues whose Celery protocol 2 messages are translated on delivery (celery/delivery.py).
        self.celery_queues = frozenset(q for q in self.queues if q in app.queues and app.queues[q].celery)
        self.stop_signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)
        self.lifecycle = Lifecycle()
        self.retirement = Retirement(max_tasks, max_memory_bytes)
        self.flight = InFlight()
        # The consuming session declares the topology; the publisher need not repeat it (a first retry
        # or dead letter would wait for a hundred declarations).
        self.publisher = AsyncPublisher(app.settings, (), role="worker-publish")
        task_metrics = TaskMetrics() if metrics else None
        if task_metrics is not None:
            self.publisher.on_confirm = task_metrics.publish_confirm.observe
        self.events: Events | None = None
        if app.settings.events or task_metrics is not None:
            self.events = Events(
                app.settings,
                self.publisher,
                app.name,
                self.queues,
                self._stats,
                publish=app.settings.events,
                metrics=task_metrics,
            )
        self._received_log = self.events.received if self.events is not None else None
        started_log = self.events.started if self.events is not None else None
        self.redeliveries = Redeliveries(app, self._settle, lambda: self.threads.running(), running_markers)
        self.threads = TaskThreads(app, self.queues, threads, self.redeliveries, started_log=started_log)
        self.settler = Settler(
            app,
            self.publisher,
            flight=self.flight,
            retirement=self.retirement,
            lifecycle=self.lifecycle,
            redeliveries=self.redeliveries,
            on_limit=self._on_limit,
            events=self.events,
        )
        # Tasks with `dedupe_s` and chord callbacks claim each message before it runs (a sync look first).
        self.dedupe = Dedupe(app, self.publisher, self.settler.settle)
        self.policy = InlinePolicy(inline_max_s) if threads == 1 and inline_max_s > 0 else None
        self.inline: InlineRunner | None = None
        if self.policy is not None:
            self.inline = InlineRunner(
                app, self.policy, self.threads, self.redeliveries, self.lifecycle, self.settler.settle, started_log
            )
        self.dispatcher = Dispatcher(
            app, self.threads, self.redeliveries, self.settler.settle, inline=self.inline, started_log=started_log
        )
        if any(t.retries_in_place for t in app.tasks.values() if t.queue in self.queues):
            self.settler.in_place = InPlaceRetries(app, self.settler, self.lifecycle, self.dispatcher.route)
        self.session = Session(
            app,
            self.queues,
            self._on_message,
            prefetch=prefetch or app.settings.prefetch,
            threads=threads,
            lifecycle=self.lifecycle,
            retirement=self.retirement,
            settler=self.settler,
            flight=self.flight,
            unstarted=self.threads.unstarted,
            shutdown_timeout_s=shutdown_timeout_s,
            on_ready=on_ready,
            on_consuming=on_consuming,
            partition_slot=partition_slot,
            before_consume=lambda: self.revoke.read_first(self.lifecycle.stopping),
            consumer_timeouts=consumer_timeouts,
        )
        self.rates = RateGate(app, self.lifecycle.handing_back) if app.settings.control else None
        self.control: ControlPlane | None = None
        if app.settings.control:
            self.control = ControlPlane(
                app,
                self.queues,
                stats=self._control_stats,
                waiting=lambda: list(self.threads.waiting.values()),
                on_stuck=self._terminate_stuck,
                on_pool=on_pool,
            )
        catch_up = self.control.catch_up if self.control is not None else None
        self.revoke = RevokeStage(self.settler.settle, self.settler.hand_back, self.lifecycle.handing_back, catch_up)
        self._budget_watch: asyncio.Task[None] | None = None
        # Chords join on the broker: every child stands by on the join queue, one at a time is active.
        self.joiner = Joiner(app, self.publisher, self.lifecycle) if app.settings.chord_joiner else None
        # Unless pinned, the prefetch adapts to the run times it sees (prefetch.py); `prefetch` is then its floor.
        self.adaptive: AdaptivePrefetch | None = None
        if adaptive_allowed(app, self.queues, pinned=prefetch, max_tasks=max_tasks):
            self.adaptive = AdaptivePrefetch(
                self.session.prefetch,
                resize=self.session.resize,
                shed=self._shed,
                stalled_since=self.threads.stalled_since,
            )
            self.settler.adaptive = self.adaptive

    @property
    def tasks_done(self) -> int:
        return self.retirement.tasks_done

    async def run(self) -> int:
        """Consume until a stop is requested; reconnect with back-off when the broker goes away."""
        loop = asyncio.get_running_loop()
        for sig in self.stop_signals:
            loop.add_signal_handler(sig, self.stop)
        self.threads.start(self.settler.settle, self._time_limit_passed, self.policy)
        if self.events is not None:
            self.events.start()
        joining = asyncio.ensure_future(self.joiner.run()) if self.joiner is not None else None
        progress.set_sink(self.events.progress if self.events is not None else progress.drop)
        if self.adaptive is not None:
            self.adaptive.start()
        try:
            if self.control is not None:
                self.control.start()  # the session connects and declares meanwhile, and waits for it to consume
            if self.rates is not None:
                self.rates.start()
            code = await self.session.run()
        finally:
            await self._close(joining)
        if code == EXIT_OK:
            log.info("worker stopped after %d task(s)", self.tasks_done)
        return code

    async def _close(self, joining: asyncio.Future[None] | None) -> None:
        """After the session: stop the control plane, the joiner, threads and events; close every client."""
        if self.control is not None:
            await self.control.close()
        if self.rates is not None:
            await self.rates.close()
        self.lifecycle.stopped()
        if joining is not None:
            joining.cancel()  # what it holds goes back to the join queue for the next joiner
            await asyncio.gather(joining, return_exceptions=True)
        self.settler.successes.flush()  # the last turn's success lines, before the child exits
        if self._budget_watch is not None:
            self._budget_watch.cancel()
        if self.adaptive is not None:
            self.adaptive.close()
        self.threads.close()
        if self.events is not None:
            await self.events.close()
        await self.publisher.close()
        if self.settler.backend is not None:
            await self.settler.backend.aclose()
        if self.settler.celery is not None and self.settler.celery.results is not None:
            await self.settler.celery.results.aclose()

    async def _on_message(self, message: DeliveredMessage) -> None:
        """One delivery's walk: session -> redelivery -> dedupe -> dispatch -> (run) -> settle."""
        acker = self.settler.acker
        if acker is None:
            return  # not acked: the broker requeues it when the channel closes
        acker.delivered(delivery_tag(message))
        if acker.urgent_consumers:
            partition = acker.urgent_consumers.get(getattr(message.delivery, "consumer_tag", None) or "")
            if partition is not None:  # its next message waits for this ack; this child is its active consumer
                acker.urgent(delivery_tag(message))
                acker.active.add(partition)
        self.flight.add()
        if self.lifecycle.handing_back.is_set():  # came before the cancel-ok: hand it back at once
            self.settler.hand_back(message)
            return
        if self.celery_queues and is_celery(message.header.properties.headers):
            message = translate(message, self.celery_queues)  # Celery's headers read once, for every stage
        if self._received_log is not None:
            self._received_log.append((message, time.time()))
        if self.retirement.delivered():
            self.retire(f"--max-tasks-per-child {self.max_tasks} reached")
        try:
            if not await self._admit(message):
                return
        except asyncio.CancelledError:  # aiormq cancels a channel's callbacks as it closes: the broker requeues it
            self.settler.hand_back(message)  # unsettled (each stage settles only when it returns): not in flight now
            raise
        running = self.dispatcher.route(message)  # a sync task is queued for a thread, or run and settled inline
        if running is not None:  # an async task, or an inline one waiting for its turn
            await running

    async def _admit(self, message: DeliveredMessage) -> bool:
        """The stages before a run: redelivery, revoke, dedupe, rate; False when one settled or kept it."""
        if not self.redeliveries.admit(message):
            return False  # settled unrun, or waits for a run of it here
        if not self.revoke.caught_up() and not await self.revoke.wait(message):
            return False  # handed back: a warm shutdown came while the revocations were being read
        if not self.revoke.admit(message):
            return False  # revoked: dead-lettered unrun
        if self.dedupe.window(message) is not None and not await self.dedupe.admit(message):
            return False  # a copy of it ran: acked unrun
        rates = self.rates
        if rates is not None and rates.limit_of(message) is not None:  # waits here, in this message's own task
            if not await rates.acquire(message.header.properties.message_type or ""):
                self.settler.hand_back(message)  # a warm shutdown came while it waited for a token
                return False
        return True

    # -- lifecycle -----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Warm shutdown: stop consuming, hand back what has not started, finish what runs, ack, exit."""
        if not self.lifecycle.signal():
            log.warning("second stop signal: cold shutdown, unfinished tasks go back to the queue")
            os._exit(1)
        log.info("warm shutdown: finishing running tasks (at most %.0f s)", self.shutdown_timeout_s)

    def retire(self, reason: str, *, hand_back: bool = False) -> None:
        """Stop consuming, finish and ack what it holds (or hand back what has not started), then return."""
        if not self.lifecycle.retire(reason, hand_back=hand_back):
            return
        log.info("retiring (%s) after %d task(s); its successor is starting", reason, self.tasks_done)
        if self.settler.acker is not None:
            self.settler.acker.hold()  # until the consumer is cancelled: an ack now could bring one more message
        if self.on_retire is not None:
            self.on_retire(reason)

    def _on_limit(self) -> None:
        """After a task, before its ack: retire above the memory limit; at the max-tasks budget, hold acks."""
        if not self.lifecycle.running:
            return
        if reason := self.retirement.memory_exceeded():
            self.retire(reason)
        elif self.retirement.over_budget:
            # One more ack and the broker could send more than max_tasks: hold acks. The broker still sends
            # up to the budget; the child retires at the last one (`_on_message`), or when nothing else came.
            if self.settler.acker is not None:
                self.settler.acker.hold()
            if self._budget_watch is None:
                self._budget_watch = asyncio.ensure_future(self._retire_when_idle())

    async def _retire_when_idle(self) -> None:
        """At the budget: retire once nothing is in flight for `BUDGET_IDLE_S` (deliveries may be on the wire)."""
        while self.lifecycle.running:
            await self.flight.idle.wait()
            await asyncio.sleep(BUDGET_IDLE_S)
            if self.lifecycle.running and self.flight.count <= 0:
                self.retire(f"--max-tasks-per-child {self.max_tasks}: no more messages came within its budget")

    def _time_limit_passed(self, outcome: Outcome) -> None:
        """A sync task still ran at its hard time limit: settle it as failed and retire (its thread is lost)."""
        self.settler.settle(outcome)
        self.retire("a sync task passed its time limit", hand_back=True)

    def _terminate_stuck(self, run: Run) -> None:
        """A sync task revoked with terminate=True outlived its grace period: dead-letter it, replace this child."""
        self.threads.abandon(run.message)
        exc_message = f"task {run.task_name!r} was revoked with terminate=True and did not stop within the grace period"
        outcome = Outcome(
            run.message,
            run.task_name,
            reason=Reason.TERMINATED,
            exc_type="TaskRevoked",
            exc_message=exc_message,
            runtime_s=time.time() - run.started_at,
        )
        self.settler.settle(outcome)
        self.retire("a terminated sync task did not stop", hand_back=True)

    def _shed(self) -> int:
        """Hand back what waits for a thread (first deliveries only: a return counts on quorum queues)."""
        if not self.lifecycle.running:
            return 0

        def handable(message: DeliveredMessage) -> bool:
            return not message.redelivered

        taken = self.threads.shed(handable) + (self.inline.shed(handable) if self.inline is not None else [])
        for message in taken:
            self.settler.hand_back(message)
        return len(taken)

    # -- wiring --------------------------------------------------------------------------------------

    def _settle(self, outcome: Outcome) -> None:  # for the redeliveries, made before the settler
        self.settler.settle(outcome)

    def load(self) -> bytes:
        """For the autoscaler: IDLE (holds nothing), BUSY (messages wait for a task slot), or WORKING."""
        count = self.flight.count
        if count <= 0:
            return IDLE
        return BUSY if self.threads.waiting or count >= self.session.prefetch else WORKING

    def _control_stats(self) -> dict[str, Any]:
        """What `inspect stats` adds from this child's own state."""
        return {
            "prefetch": self.session.prefetch,
            "threads": self.threads.count,
            "in_flight": self.flight.count,
            "tasks_done": self.tasks_done,
        }

    def _stats(self) -> dict[str, Any]:
        """What a heartbeat says of this child's work."""
        acker = self.settler.acker
        return {
            "done": self.tasks_done,
            "in_flight": self.flight.count,
            "consuming": acker is not None and acker.alive and self.lifecycle.running,
            "reconnects": self.session.reconnects,
            "chords": self.joiner.running() if self.joiner is not None else [],
            "active_partitions": sorted(acker.active) if acker is not None else [],
        }
