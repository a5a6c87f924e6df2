"""Where an admitted message runs: async tasks on the event loop, sync tasks inline or in a task thread.

An async task runs in the consume callback itself, at most `prefetch` at a time. A sync task runs
inline, in the consume callback too, when its task proved short (inline.py), else it is queued for
the task threads (threads.py). A message of no known task goes to a thread as well, where running it
fails it (`Reason.UNKNOWN`) like any other run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiormq.abc import DeliveredMessage

from rabbittask.worker.execute import prepare, run_async
from rabbittask.worker.outcome import Outcome

if TYPE_CHECKING:
    from rabbittask.app import App
    from rabbittask.worker.events import MessageLog
    from rabbittask.worker.inline import InlineRunner
    from rabbittask.worker.redelivery import Redeliveries
    from rabbittask.worker.threads import TaskThreads


class Dispatcher:
    """Routes each admitted message to the loop, the inline runner or the task threads."""

    def __init__(
        self,
        app: App,
        threads: TaskThreads,
        redeliveries: Redeliveries,
        settle: Callable[[Outcome], None],
        *,
        inline: InlineRunner | None = None,
        started_log: MessageLog | None = None,
    ) -> None:
        self.app = app
        self.inline = inline  # None: every sync task runs in a thread
        self._tasks = app.tasks
        self._threads = threads
        self._redeliveries = redeliveries
        self._settle = settle
        self._started_log = started_log

    def route(self, message: DeliveredMessage) -> Awaitable[None] | None:
        """Run or queue `message`; what the consume callback must await (an async task, an inline turn), or None."""
        task = self._tasks.get(message.header.properties.message_type or "")
        if task is not None and task.is_async:
            # aiormq cancels a channel's consumer callbacks when it closes: the run goes on and settles as a
            # sync task's run does then (the broker redelivers; a redelivery here waits for it, redelivery.py)
            return asyncio.shield(self._run_async(message))
        inline = self.inline
        if inline is not None and task is not None and inline.policy.inline(task):
            return inline.run(message, task)
        self._threads.put(message)
        return None

    async def _run_async(self, message: DeliveredMessage) -> None:
        """Run an async task's message on the loop, then settle it."""
        if self._started_log is not None:
            self._started_log.append((message, time.time()))
        prepared = prepare(self.app, message)
        if isinstance(prepared, Outcome):
            outcome = prepared
        else:
            redeliveries = self._redeliveries
            marked = redeliveries.start(message) if redeliveries.marked else None
            outcome = await run_async(*prepared, message)
            if marked is not None:
                redeliveries.ended(marked)
        self._settle(outcome)
