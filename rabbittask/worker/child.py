"""A worker child: one consuming connection, per-consumer prefetch, late acks, wired from named stages.

A message walks through them in order (`_on_message`):

    session (session.py)        delivered on the current channel; counted in flight
    redelivery (redelivery.py)  expired, not due, delivered too often, or a run this child already has?
    dispatch (dispatch.py)      async task: run on the loop; sync task: inline (inline.py) or a thread (threads.py)
    outcome (outcome.py)        what happened, and the `Reason` if it did not simply succeed
    settle (settle.py)          ack, reply / store then ack, republish or dead-letter then ack, hand back

`retirement.py` holds the one lifecycle `State` and the limits that end a child (max tasks, memory,
a hard time limit); the supervisor hears of a retirement through `on_retire` and starts the
successor before this child is done. A new feature is one more stage or one more `Reason`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from aiormq.abc import DeliveredMessage

from rabbittask.publish.aio import AsyncPublisher
from rabbittask.worker.acks import delivery_tag
from rabbittask.worker.dedupe import Dedupe
from rabbittask.worker.dispatch import Dispatcher
from rabbittask.worker.events import Events
from rabbittask.worker.exits import EXIT_OK
from rabbittask.worker.inline import InlinePolicy, InlineRunner
from rabbittask.worker.metrics import TaskMetrics
from rabbittask.worker.outcome import Outcome
from rabbittask.worker.prefetch import AdaptivePrefetch, adaptive_allowed
from rabbittask.worker.redelivery import Redeliveries
from rabbittask.worker.retirement import BUDGET_IDLE_S, Lifecycle, Retirement
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
    ) -> None:
        self.app = app
        self.queues = list(queues) or sorted(app.queues)
        self.max_tasks = max_tasks
        self.shutdown_timeout_s = shutdown_timeout_s
        self.on_retire = on_retire
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
        self.redeliveries = Redeliveries(app, self._settle, self._running_here, running_markers)
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
        # Tasks with `dedupe_s` claim each message before it runs; without any, the stage is skipped.
        self.dedupe = (
            Dedupe(app, self.publisher, self.settler.settle)
            if any(t.dedupe_s for t in app.tasks.values() if t.queue in self.queues)
            else None
        )
        self.policy = InlinePolicy(inline_max_s) if threads == 1 and inline_max_s > 0 else None
        self.inline: InlineRunner | None = None
        if self.policy is not None:
            self.inline = InlineRunner(
                app, self.policy, self.threads, self.redeliveries, self.lifecycle, self.settler.settle, started_log
            )
        self.dispatcher = Dispatcher(
            app, self.threads, self.redeliveries, self.settler.settle, inline=self.inline, started_log=started_log
        )
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
        )
        self._budget_watch: asyncio.Task[None] | None = None
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
        if self.adaptive is not None:
            self.adaptive.start()
        try:
            code = await self.session.run()
        finally:
            self.lifecycle.stopped()
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
        if code == EXIT_OK:
            log.info("worker stopped after %d task(s)", self.tasks_done)
        return code

    async def _on_message(self, message: DeliveredMessage) -> None:
        """One delivery's walk: session -> redelivery -> dedupe -> dispatch -> (run) -> settle."""
        acker = self.settler.acker
        if acker is None:
            return  # not acked: the broker requeues it when the channel closes
        acker.delivered(delivery_tag(message))
        self.flight.add()
        if self.lifecycle.handing_back.is_set():  # came before the cancel-ok: hand it back at once
            self.settler.hand_back(message)
            return
        if self._received_log is not None:
            self._received_log.append((message, time.time()))
        if self.retirement.delivered():
            self.retire(f"--max-tasks-per-child {self.max_tasks} reached")
        if not self.redeliveries.admit(message):
            return  # settled unrun, or waits for a run of it here
        if self.dedupe is not None and not await self.dedupe.admit(message):
            return  # a copy of it ran: acked unrun
        running = self.dispatcher.route(message)  # a sync task is queued for a thread, or run and settled inline
        if running is not None:  # an async task, or an inline one waiting for its turn
            await running

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

    def _running_here(self) -> list[DeliveredMessage]:
        return self.threads.running()

    def _stats(self) -> dict[str, Any]:
        """What a heartbeat says of this child's work."""
        acker = self.settler.acker
        return {
            "done": self.tasks_done,
            "in_flight": self.flight.count,
            "consuming": acker is not None and acker.alive and self.lifecycle.running,
            "reconnects": self.session.reconnects,
        }
