"""Retries that wait in place: the retry of a `partition_by` task holds up its partition instead of going behind.

A retry normally goes back to its queue through the delay ladder, and later messages run meanwhile. On an
ordered partition that would run a key's later tasks before the one that failed. So for a task declared
with `partition_by` (and `partition_retry="wait"`, the default) the worker keeps the message unacked, waits
out the back-off here and runs it again with the next attempt number; when retries run out it is
dead-lettered as usual and the partition moves on. The partition is consumed with a prefetch of 1, so
nothing else of it is delivered meanwhile: every key that hashes to the partition waits too (the price of
order, docs/partitions.md).

If the worker dies during the wait, the broker returns the message to the head of its partition (a quorum
queue delivers returned messages first) and the next active consumer runs it at once, with the attempt its
headers carry: the rest of the wait is lost, never the order. A warm shutdown hands it back the same way.
A wait counts against the broker's `consumer_timeout` like a long run: keep `retry_backoff_max` well
below it (600 s by default against 30 min).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiormq.abc import DeliveredMessage

from rabbittask.message import H_ATTEMPT
from rabbittask.worker import tasklog
from rabbittask.worker.outcome import Outcome

if TYPE_CHECKING:
    from rabbittask.app import App
    from rabbittask.worker.retirement import Lifecycle
    from rabbittask.worker.settle import Settler

log = logging.getLogger(__name__)

Route = Callable[[DeliveredMessage], Awaitable[None] | None]


class InPlaceRetries:
    """Holds retried messages of `partition_by` tasks for their back-off, then runs them again through `route`."""

    def __init__(self, app: App, settler: Settler, lifecycle: Lifecycle, route: Route) -> None:
        self.app = app
        self._settler = settler
        self._lifecycle = lifecycle
        self._route = route
        self._waiting: set[asyncio.Task[None]] = set()

    @property
    def waiting(self) -> int:
        """Messages held for a retry right now."""
        return len(self._waiting)

    def take(self, outcome: Outcome) -> bool:
        """Keep `outcome`'s message for a retry in place; False when its task retries through the delay ladder."""
        task = self.app.tasks.get(outcome.task_name)
        republish = outcome.republish
        if task is None or not task.retries_in_place or republish is None:
            return False
        self._settler.successes.flush()  # the success lines before it come first
        tasklog.retried(outcome, republish.headers.get(H_ATTEMPT, "?"), republish.delay_s)
        waiter = asyncio.ensure_future(self._wait_then_run(outcome, republish.delay_s, republish.headers))
        self._waiting.add(waiter)
        waiter.add_done_callback(self._waiting.discard)
        return True

    async def _wait_then_run(self, outcome: Outcome, delay_s: float, headers: dict[str, Any]) -> None:
        message = outcome.message
        try:
            await asyncio.wait_for(self._lifecycle.stopping.wait(), delay_s)
        except TimeoutError:
            pass
        settler = self._settler
        acker = settler.acker
        if acker is None or message.channel is not acker.channel or not acker.alive:
            # Its channel closed: the broker has it back at the head of its partition already.
            settler.flight.done()
            return
        if not self._lifecycle.running:
            log.info(
                "task %s [%s]: stopping; its retry goes back to its partition", outcome.task_name, outcome.message_id
            )
            settler.hand_back(message)
            return
        props = message.header.properties
        props.headers = {**(props.headers or {}), **headers}  # the next attempt, as a copy would carry it
        running = self._route(message)
        if running is not None:
            await running
