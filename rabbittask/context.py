"""TaskContext: what a task declared with `bind=True` learns about its own run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

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

    @property
    def retries(self) -> int:
        """Retries before this run (`attempt - 1`)."""
        return self.attempt - 1

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
