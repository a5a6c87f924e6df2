"""TaskContext: what a task declared with `bind=True` learns about its own run."""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rabbittask.control.local import check_revoked
from rabbittask.errors import Retry


@dataclass(frozen=True, slots=True)
class TaskContext:
    """Passed as the first argument of a `bind=True` task.

    ```python
    @app.task(bind=True, max_retries=5)
    def fetch(ctx: TaskContext, url: str) -> None:
        try:
            ...
        except TimeoutError as e:
            raise ctx.retry(countdown=10 * ctx.attempt, exc=e)
    ```
    """

    id: str
    task_name: str
    queue: str
    attempt: int = 1
    """Which run this is: 1 the first, 2 the first retry, ..."""
    headers: Mapping[str, Any] = field(default_factory=dict)
    """The message's AMQP headers (read-only; `rt-*` are rabbittask's, `x-*` the broker's)."""
    redelivered: bool = False
    """True if this message was delivered before and not settled then (its worker died, lost its
    connection or was cut off by `consumer_timeout`): the task may have run, in part or in full."""
    resent: bool = False
    """True if a publisher sent this message again because the first copy's confirm never came (its
    connection closed, or no confirm in time, header `rt-resent`): the first copy may have run too. A
    task with `dedupe_s` runs only one of them."""
    delivery_count: int = 1
    """Which delivery of this message this is, 1 the first; redeliveries after a retry start again at 1.
    Quorum queues count (`x-delivery-count`); on classic queues it is the worker's `rt-delivery-count`,
    and 2 for a redelivery the worker has not counted (a queue without a `delivery_limit`), a lower bound."""
    reply: tuple[str, str] | None = field(default=None, repr=False, compare=False)
    """Where a `.call(on_progress=...)` caller waits for progress (reply-to, correlation id)."""

    def check_revoked(self) -> None:
        """Raise `TaskRevoked` if this task was revoked with `terminate=True`; call it between steps of long work.

        Let it propagate: the message is dead-lettered (reason `terminated`) and the worker goes on.
        """
        check_revoked(self.id, self.task_name)

    @property
    def retries(self) -> int:
        """Retries before this run (`attempt - 1`)."""
        return self.attempt - 1

    def progress(self, done: int, total: int, note: str = "") -> None:
        """Report how far the task is: `done` of `total`, with a short `note` (cut at 200 characters).

        Cheap: at most one report per task a second leaves the worker, as an event (the dashboard,
        `handle.progress()`) and, for a `.call(on_progress=fn)` caller, to its callback.
        """
        from rabbittask import progress

        progress.report(self.id, self.task_name, done, total, note, self.reply)

    def retry(
        self,
        countdown: float | None = None,
        *,
        eta: datetime | None = None,
        exc: BaseException | None = None,
        max_retries: int | None = None,
    ) -> Retry:
        """The `Retry` to raise: `raise ctx.retry(countdown=30, exc=e)`; no countdown: the task's back-off."""
        return Retry(countdown, eta=eta, exc=exc, max_retries=max_retries)


running: ContextVar[tuple[str, str] | None] = ContextVar("rabbittask_running_task", default=None)
"""`(task name, task id)` of the task running in this context, else None.

The worker sets it around each run (a thread's run, an async task's coroutine): task loggers put it in
their records, and a blocking wait for another task's result from inside a run is refused with it.
"""
