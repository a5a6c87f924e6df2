"""The task threads of a child: sync tasks run here, fed by a queue, so heartbeats and acks keep flowing.

Each thread takes a message, runs it and appends the outcome to `results`; the event loop collects
outcomes in batches (one wake-up for all that finished meanwhile) and settles them. A message whose
channel closed while it waited is not run: the broker has requeued it already (`Reason.STALE`).

Tasks with time limits run under `ThreadLimits` (limits.py): at the soft limit the thread gets
`SoftTimeLimitExceeded`; at the hard limit the thread is abandoned, its message is settled as failed
by the loop, and the child retires (`on_abandoned`).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiormq.abc import DeliveredMessage

from rabbittask.errors import SoftTimeLimitExceeded
from rabbittask.worker.execute import run_sync, soft_limit_outcome, time_limit_outcome
from rabbittask.worker.limits import ThreadLimits
from rabbittask.worker.outcome import Outcome, Reason

if TYPE_CHECKING:
    from rabbittask.app import App
    from rabbittask.worker.events import MessageLog
    from rabbittask.worker.inline import InlinePolicy
    from rabbittask.worker.redelivery import Redeliveries

log = logging.getLogger(__name__)

LIMITS_TICK_S = 0.1  # how often time limits of sync tasks are checked (their precision)


class TaskThreads:
    """`count` threads running the sync tasks of `queues`; outcomes go to `settle` on the loop, run times to `policy`.

    Time limits are watched only when a sync task of these queues has one.
    """

    def __init__(
        self,
        app: App,
        queues: list[str],
        count: int,
        redeliveries: Redeliveries,
        *,
        started_log: MessageLog | None = None,
    ) -> None:
        limited = any(
            t.time_limit is not None or t.soft_time_limit is not None
            for t in app.tasks.values()
            if t.queue in queues and not t.is_async
        )
        self.app = app
        self.count = count
        self.pending = 0  # messages handed to the threads whose outcome has not been collected yet
        self.idle = asyncio.Event()  # set while `pending` is 0: inline runs wait for it (inline.py)
        self.idle.set()
        self.results: deque[Outcome] = deque()
        self._jobs: queue.SimpleQueue[DeliveredMessage | None] = queue.SimpleQueue()
        self._running: list[DeliveredMessage | None] = [None] * count  # what each thread runs now
        self.waiting: dict[int, DeliveredMessage] = {}  # queued, not started (`inspect scheduled`), by id()
        self._abandoned: set[int] = set()  # id() of runs settled without their thread (terminated, revoke)
        self._since = [0.0] * count  # when each thread's current task started (monotonic)
        self._limits = ThreadLimits() if limited else None
        self._redeliveries = redeliveries
        self._started_log = started_log
        self._wake_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._settle: Callable[[Outcome], None] = lambda outcome: None
        self._on_abandoned: Callable[[Outcome], None] = lambda outcome: None
        self._policy: InlinePolicy | None = None

    def start(
        self,
        settle: Callable[[Outcome], None],
        on_abandoned: Callable[[Outcome], None],
        policy: InlinePolicy | None = None,
    ) -> None:
        """Start the threads (and the time-limit checks) on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._settle, self._on_abandoned, self._policy = settle, on_abandoned, policy
        if self._limits is not None:
            self._loop.call_later(LIMITS_TICK_S, self._check_time_limits)
        for i in range(self.count):
            threading.Thread(target=self._main, args=(i,), name=f"rabbittask-task-{i}", daemon=True).start()

    def close(self) -> None:
        """Let the threads end once they finish what they run (a thread past its hard limit never does)."""
        for _ in range(self.count):
            self._jobs.put(None)

    def put(self, message: DeliveredMessage) -> None:
        self.pending += 1
        self.idle.clear()
        self.waiting[id(message)] = message
        self._jobs.put(message)

    def abandon(self, message: DeliveredMessage) -> None:
        """Give up on the run of `message` (the loop settles it): the outcome its thread may still bring is dropped."""
        self._abandoned.add(id(message))
        self._done()

    def _done(self, count: int = 1) -> None:
        self.pending -= count
        if self.pending <= 0:
            self.idle.set()

    def unstarted(self) -> list[DeliveredMessage]:
        """Take back the messages no thread has started (a warm shutdown hands them back)."""
        taken: list[DeliveredMessage] = []
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self.waiting.pop(id(job), None)
                taken.append(job)
        self._done(len(taken))
        return taken

    def shed(self, handable: Callable[[DeliveredMessage], bool]) -> list[DeliveredMessage]:
        """Take back the waiting messages for which `handable` holds; the others keep their order."""
        taken: list[DeliveredMessage] = []
        for message in self.unstarted():
            if handable(message):
                taken.append(message)
            else:
                self.put(message)
        return taken

    def stalled_since(self) -> float | None:
        """When the youngest task started while every thread runs one (None: a thread is free)."""
        if any(m is None for m in self._running):
            return None
        return max(self._since)

    def running(self) -> list[DeliveredMessage]:
        """Messages a thread runs now, or ran and are not settled yet (a redelivery of one waits for it)."""
        unsettled = [o.message for o in list(self.results) if o.reason is not Reason.STALE]
        return [m for m in (*self._running, *unsettled) if m is not None]

    def _main(self, slot: int) -> None:
        limits, running, redeliveries = self._limits, self._running, self._redeliveries
        started_log = self._started_log
        while (message := self._jobs.get()) is not None:
            self.waiting.pop(id(message), None)
            if message.channel.is_closed:  # the broker already requeued it: running it now only duplicates
                outcome: Outcome | None = Outcome(message, "", reason=Reason.STALE)
            else:
                if started_log is not None:
                    started_log.append((message, time.time()))
                # `marked` is empty unless redeliveries run: a marker is written before they start
                marked = redeliveries.start(message) if redeliveries.marked else None
                self._since[slot] = time.monotonic()
                running[slot] = message
                outcome = run_sync(self.app, message) if limits is None else self._run_limited(limits, message)
                running[slot] = None
                if marked is not None:
                    redeliveries.ended(marked)
            if outcome is None:
                continue  # abandoned at its hard time limit: the event loop settled it
            if self._abandoned and id(message) in self._abandoned:
                self._abandoned.discard(id(message))
                continue  # terminated after its grace period: the event loop settled it
            self.results.append(outcome)
            if not self._wake_pending:
                self._wake_pending = True
                assert self._loop is not None
                try:
                    self._loop.call_soon_threadsafe(self._collect)
                except RuntimeError:  # the loop is closed: the process is exiting
                    return

    def _run_limited(self, limits: ThreadLimits, message: DeliveredMessage) -> Outcome | None:
        task = self.app.tasks.get(message.header.properties.message_type or "")
        entry = limits.start(task, message) if task is not None else None
        if entry is None:
            return run_sync(self.app, message)
        outcome: Outcome | None = None
        while True:
            try:
                if outcome is None:
                    outcome = run_sync(self.app, message)
                return None if limits.finish(entry) else outcome
            except SoftTimeLimitExceeded:  # raised after the task returned, before finish(): sent once only
                if outcome is None:
                    outcome = soft_limit_outcome(message, entry.task, entry.task.soft_time_limit or 0.0)

    def _collect(self) -> None:
        self._wake_pending = False
        results, policy, tasks, settle = self.results, self._policy, self.app.tasks, self._settle
        while results:
            outcome = results.popleft()
            self._done()
            if policy is not None and (task := tasks.get(outcome.task_name)) is not None:
                policy.observe(task, outcome.runtime_s)
            settle(outcome)

    def _check_time_limits(self) -> None:
        assert self._limits is not None and self._loop is not None
        for entry in self._limits.check(time.monotonic()):
            log.error(
                "task %s [%s] still runs at its time_limit of %g s: dead-lettering it and replacing this child "
                "(a thread cannot be stopped)",
                entry.task.name,
                entry.message.header.properties.message_id,
                entry.task.time_limit,
            )
            self._done()  # its thread is abandoned: the loop settles the message
            self._on_abandoned(time_limit_outcome(entry.message, entry.task, entry.task.time_limit or 0.0))
        self._loop.call_later(LIMITS_TICK_S, self._check_time_limits)
