"""Which sync tasks a child runs on its main thread instead of handing them to its task thread, and how.

Handing a message to the task thread and its outcome back costs two thread wake-ups and a GIL
hand-over, several times what a no-op task costs itself. So a child with one task thread runs a
sync task inline, on the event loop's thread, once the task has proven short: `PROVEN_AFTER` runs in
a row, each under `max_s`. A run that takes longer (or a scheduler hiccup that makes it look longer)
sends the task back to the thread until it proves itself again, over twice as many runs each time,
so a task that is sometimes slow rarely blocks the loop. Tasks with time limits always run in the
thread (only there can a limit be enforced), and nothing runs inline while the thread has work: a
child's sync tasks still run one at a time, in order. What waits for the thread that way can be
handed back (`shed`, when adaptive prefetch finds a long task holding the thread: prefetch.py).

Inline work is bounded (`BURST_S`): after that much inline run time, the next inline task waits
for the loop's next pass, so acks, heartbeats and new deliveries keep flowing between bursts.

An inline task runs with no running event loop set, as in a thread: `asyncio.run()` inside it works
and `asyncio.get_running_loop()` raises, as a task written for a worker thread expects. asyncio has
no public way to do that inside a pass of the loop, so one helper (`run_as_in_a_thread`) does it with
`asyncio._set_running_loop`. The public way, leaving `run_forever` after each pass that queued inline
work and running it between passes, was built and measured: it costs about 3 µs per loop pass, and a
drain carries only about 3 deliveries per pass, so B1 and B2 dropped by 4 to 9%.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from aiormq.abc import DeliveredMessage

from rabbittask.worker.execute import run_sync
from rabbittask.worker.outcome import Outcome, Reason

if TYPE_CHECKING:
    from rabbittask.app import App
    from rabbittask.task import Task
    from rabbittask.worker.events import MessageLog
    from rabbittask.worker.redelivery import Redeliveries
    from rabbittask.worker.retirement import Lifecycle
    from rabbittask.worker.threads import TaskThreads

log = logging.getLogger(__name__)

PROVEN_AFTER = 50  # runs under max_s in a row before a task may run inline
MAX_DOUBLINGS = 10  # each slow run doubles the runs a task needs to prove itself, up to 50 << 10
BURST_S = 0.005  # inline run time before the next inline task waits for the loop's next pass


class InlinePolicy:
    """Tracks the run times of sync tasks and says which ones run on the loop's thread."""

    def __init__(self, max_s: float) -> None:
        self.max_s = max_s
        self._streak: dict[str, int] = {}  # task name -> runs under max_s in a row
        self._needed: dict[str, int] = {}  # task name -> runs in a row it needs to run inline

    def inline(self, task: Task[Any, Any]) -> bool:
        """True when `task` runs on the loop's thread."""
        name = task.name
        return self._streak.get(name, 0) >= self._needed.get(name, PROVEN_AFTER)

    def observe(self, task: Task[Any, Any], runtime_s: float) -> None:
        """Count a finished run (in the thread or inline) of a sync task."""
        name = task.name
        if task.time_limit is not None or task.soft_time_limit is not None:
            return  # only a thread can enforce a time limit
        if runtime_s < self.max_s:
            self._streak[name] = self._streak.get(name, 0) + 1
        else:
            was_inline = self.inline(task)
            self._streak[name] = 0
            needed = self._needed[name] = min(self._needed.get(name, PROVEN_AFTER) * 2, PROVEN_AFTER << MAX_DOUBLINGS)
            if was_inline:
                log.info(
                    "task %s took %.1f ms: back to the task thread until %d runs in a row stay under %g ms",
                    name,
                    runtime_s * 1000,
                    needed,
                    self.max_s * 1000,
                )


class InlineRunner:
    """Runs the messages of proven-short sync tasks on the loop's thread, in the consume callback."""

    def __init__(
        self,
        app: App,
        policy: InlinePolicy,
        threads: TaskThreads,
        redeliveries: Redeliveries,
        lifecycle: Lifecycle,
        settle: Callable[[Outcome], None],
        started_log: MessageLog | None = None,
    ) -> None:
        self.app = app
        self.policy = policy
        self._threads = threads
        self._redeliveries = redeliveries
        self._lifecycle = lifecycle
        self._settle = settle
        self._started_log = started_log
        self._spent_s = 0.0  # inline run time since the loop last got a pass in (reset once it reached BURST_S)
        self._reset_pending = False
        self._behind: dict[int, DeliveredMessage] = {}  # by id: messages waiting for the thread's work to end

    def run(self, message: DeliveredMessage, task: Task[Any, Any]) -> Coroutine[Any, Any, None] | None:
        """Run `message` now and settle it (None); or, when it must wait its turn, what to await."""
        if self._threads.pending or self._spent_s >= BURST_S:
            return self._later(message, task)
        self._run(message, task)
        return None

    async def _later(self, message: DeliveredMessage, task: Task[Any, Any]) -> None:
        threads = self._threads
        key, behind = id(message), self._behind
        queued = False  # in `behind`, where a shed may take it (and settle it)
        try:
            if threads.pending:  # sync tasks run one at a time, in order: the thread's work goes first
                behind[key], queued = message, True
                while threads.pending and key in behind:
                    await threads.idle.wait()
                queued = False
                if behind.pop(key, None) is None:
                    return  # handed back meanwhile (shed): settled already
            while self._spent_s >= BURST_S:
                if not self._reset_pending:
                    self._reset_pending = True
                    asyncio.get_running_loop().call_soon(self._reset)
                await asyncio.sleep(0)  # resumes after the loop polled for I/O
        except asyncio.CancelledError:  # its channel closed (aiormq cancels its callbacks): it never started
            if not queued or behind.pop(key, None) is not None:  # not taken by a shed meanwhile
                self._settle(Outcome(message, task.name, reason=Reason.HANDED_BACK))
            raise
        if self._lifecycle.handing_back.is_set():  # a warm shutdown began while it waited: hand it back unrun
            self._settle(Outcome(message, task.name, reason=Reason.HANDED_BACK))
        elif threads.pending or not self.policy.inline(task):  # changed while it waited
            threads.put(message)
        else:
            self._run(message, task)

    def shed(self, handable: Callable[[DeliveredMessage], bool]) -> list[DeliveredMessage]:
        """Take the messages waiting for the thread's work to end for which `handable` holds (to hand them back)."""
        behind = self._behind
        taken = [key for key, message in behind.items() if handable(message)]
        return [behind.pop(key) for key in taken]

    def _run(self, message: DeliveredMessage, task: Task[Any, Any]) -> None:
        if message.channel.is_closed:  # the broker already requeued it: running it now only duplicates
            self._settle(Outcome(message, task.name, reason=Reason.STALE))
            return
        if self._started_log is not None:
            self._started_log.append((message, time.time()))
        redeliveries = self._redeliveries
        marked = redeliveries.start(message) if redeliveries.marked else None
        start = time.perf_counter()
        outcome = run_as_in_a_thread(self.app, message)
        elapsed_s = time.perf_counter() - start
        if marked is not None:
            redeliveries.ended(marked)
        self._spent_s += elapsed_s
        self.policy.observe(task, elapsed_s)
        self._settle(outcome)

    def _reset(self) -> None:
        self._reset_pending = False
        self._spent_s = 0.0


def run_as_in_a_thread(app: App, message: DeliveredMessage) -> Outcome:
    """Run a sync task's message on the loop's thread as in a worker thread: with no running loop set.

    The one private asyncio call of the worker. `asyncio._set_running_loop` is exported in asyncio's
    `__all__` for event loop implementations (uvloop sets the running loop with it); there is no public
    equivalent short of leaving `run_forever`, which costs too much per loop pass (see the module doc).
    """
    loop = asyncio.get_running_loop()
    asyncio._set_running_loop(None)
    try:
        return run_sync(app, message)
    finally:
        asyncio._set_running_loop(loop)
