"""Which sync tasks a child runs on its main thread instead of handing them to its task thread, and how.

Handing a message to the task thread and its outcome back costs two thread wake-ups and a GIL
hand-over, several times what a no-op task costs itself. So a child with one task thread runs a
sync task inline, on the event loop's thread, once the task has proven short: `PROVEN_AFTER` runs in
a row, each under `max_s`. A run that takes longer (or a scheduler hiccup that makes it look longer)
sends the task back to the thread until it proves itself again, over twice as many runs each time,
so a task that is sometimes slow rarely blocks the loop. Tasks with time limits always run in the
thread (only there can a limit be enforced), and nothing runs inline while the thread has work: a
child's sync tasks still run one at a time, in order.

Inline tasks run *between* passes of the event loop, not inside one: the consume callback queues
them and stops the loop after its pass; `run_loop` runs up to `BURST_S` of them and starts the loop
again (the rest wait for the next pass, so acks, heartbeats and new deliveries keep flowing). Their
outcomes are settled in the next pass, as those of the thread are. So an inline task runs with no
event loop running and none set for the thread, as in a worker thread: `asyncio.run()` inside it
works and `asyncio.get_running_loop()` / `asyncio.get_event_loop()` raise, as a task written for a
worker thread expects, with public asyncio API only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

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
BURST_S = 0.005  # inline run time between two loop passes; the next inline task waits for the next pass
T = TypeVar("T")


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
    """Runs the messages of proven-short sync tasks between passes of the loop `run_loop` drives."""

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
        self.loop: asyncio.AbstractEventLoop | None = None  # set by `run_loop`: inline runs need it
        self._jobs: deque[tuple[DeliveredMessage, Task[Any, Any]]] = deque()
        self._threads = threads
        self._redeliveries = redeliveries
        self._lifecycle = lifecycle
        self._settle = settle
        self._started_log = started_log
        self._stop_asked = False

    def put(self, message: DeliveredMessage, task: Task[Any, Any]) -> None:
        """Queue `message` to run after this pass of the loop (called in the consume callback)."""
        self._jobs.append((message, task))
        if not self._stop_asked:
            self._stop_asked = True
            assert self.loop is not None
            self.loop.stop()  # run_forever returns after this pass; run_loop runs the jobs

    def run_burst(self) -> None:
        """Run queued messages until `BURST_S` of run time (the loop is not running: called by `run_loop`)."""
        self._stop_asked = False
        jobs, loop = self._jobs, self.loop
        if not jobs or loop is None:
            return
        threads, policy, redeliveries, started_log = self._threads, self.policy, self._redeliveries, self._started_log
        handing_back = self._lifecycle.handing_back.is_set()
        outcomes: list[Outcome] = []
        spent_s = 0.0
        asyncio.set_event_loop(None)  # as in a thread: asyncio.get_event_loop() raises instead of returning ours
        try:
            while jobs and spent_s < BURST_S:
                message, task = jobs.popleft()
                if handing_back:  # a warm shutdown began while it waited: hand it back unrun
                    outcomes.append(Outcome(message, task.name, reason=Reason.HANDED_BACK))
                elif threads.pending or not policy.inline(task):  # the thread's work goes first, in order
                    threads.put(message)
                elif message.channel.is_closed:  # the broker already requeued it: running it now only duplicates
                    outcomes.append(Outcome(message, task.name, reason=Reason.STALE))
                else:
                    if started_log is not None:
                        started_log.append((message, time.time()))
                    marked = redeliveries.start(message) if redeliveries.marked else None
                    start = time.perf_counter()
                    outcome = run_sync(self.app, message)
                    elapsed_s = time.perf_counter() - start
                    if marked is not None:
                        redeliveries.ended(marked)
                    spent_s += elapsed_s
                    policy.observe(task, elapsed_s)
                    outcomes.append(outcome)
        finally:
            asyncio.set_event_loop(loop)
        if outcomes:
            loop.call_soon(self._collect, outcomes)  # settled at the start of the next pass
        if jobs:
            self._stop_asked = True
            loop.stop()  # one pass of the loop (I/O, acks, timers), then the rest

    def _collect(self, outcomes: list[Outcome]) -> None:
        settle = self._settle
        for outcome in outcomes:
            settle(outcome)


def run_loop(main: Coroutine[Any, Any, T], inline: InlineRunner | None) -> T:
    """`asyncio.run(main)`, letting `inline` run its messages between passes of the loop."""
    with asyncio.Runner() as runner:
        if inline is None:
            return runner.run(main)
        loop = runner.get_loop()
        task = loop.create_task(main)
        task.add_done_callback(lambda _: loop.stop())
        inline.loop = loop
        try:
            while True:
                loop.run_forever()
                if task.done():
                    return task.result()
                inline.run_burst()
        finally:
            inline.loop = None  # the runner's exit cancels `main` if it is still running
