"""Which sync tasks a child runs on its event loop instead of handing them to its task thread.

Handing a message to the task thread and its outcome back costs two thread wake-ups and a GIL
hand-over, several times what a no-op task costs itself. So a child with one task thread runs a
sync task inline, on the loop, once the task has proven short: `PROVEN_AFTER` runs in a row, each
under `max_s`. A run that takes longer (or a scheduler hiccup that makes it look longer) sends
the task back to the thread until it proves itself again, over twice as many runs each time, so
a task that is sometimes slow rarely blocks the loop. Tasks with time limits always run in the
thread (only there can a limit be enforced), and nothing runs inline while the thread has work:
a child's sync tasks still run one at a time, in order.

Inline work is bounded per pass of the event loop (`BURST_S`): beyond it, the next task waits for
the loop's next pass, so acks, heartbeats and new deliveries keep flowing between bursts.

An inline task runs with no running event loop set, as in a thread: `asyncio.run()` inside it works
and `asyncio.get_running_loop()` raises, as a task written for a worker thread expects.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rabbittask.task import Task

log = logging.getLogger(__name__)

PROVEN_AFTER = 50  # runs under max_s in a row before a task may run inline
MAX_DOUBLINGS = 10  # each slow run doubles the runs a task needs to prove itself, up to 50 << 10
BURST_S = 0.005  # inline run time per event-loop pass before the next inline task waits for the next pass


class InlinePolicy:
    """Tracks the run times of sync tasks and says which ones run on the loop."""

    def __init__(self, max_s: float) -> None:
        self.max_s = max_s
        self._streak: dict[str, int] = {}  # task name -> runs under max_s in a row
        self._needed: dict[str, int] = {}  # task name -> runs in a row it needs to run inline
        self._spent = 0.0  # inline run time in this loop pass
        self._reset_pending = False

    def inline(self, task: Task[Any, Any]) -> bool:
        """True when `task` runs on the loop."""
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

    async def turn(self) -> None:
        """Wait until this loop pass has inline time left."""
        while self._spent >= BURST_S:
            if not self._reset_pending:
                self._reset_pending = True
                asyncio.get_running_loop().call_soon(self._reset)
            await asyncio.sleep(0)  # resumes after the loop polled for I/O

    def spent(self, runtime_s: float) -> None:
        """Charge an inline run to this loop pass."""
        self._spent += runtime_s

    def _reset(self) -> None:
        self._reset_pending = False
        self._spent = 0.0
