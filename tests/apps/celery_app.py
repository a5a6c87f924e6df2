"""Test app for Celery interop: rabbittask tasks under Celery's names, on a Celery queue.

The queue is RT_TEST_PREFIX; each run appends `<task id> <attempt>` to RT_LEDGER (a file) when set,
so a test can count runs. The worker reads its Celery settings from the environment
(RABBITTASK_CELERY_RESULT_BACKEND) as a user's would.
"""

from __future__ import annotations

import os
from typing import Any

from rabbittask import App, TaskContext


def _ledger(ctx: TaskContext) -> None:
    path = os.environ.get("RT_LEDGER")
    if path:
        with open(path, "a") as f:
            f.write(f"{ctx.id} {ctx.attempt}\n")


def make_app(prefix: str, broker_url: str | None = None, **settings: Any) -> App:
    app = App("celery-tests", broker_url=broker_url, accept_celery=True, default_queue=prefix, **settings)

    @app.task(name="proj.tasks.add", bind=True)
    def add(ctx: TaskContext, x: int, y: int) -> int:
        _ledger(ctx)
        return x + y

    @app.task(name="proj.tasks.fail")
    def fail(why: str) -> None:
        raise ValueError(f"boom: {why}")

    @app.task(name="proj.tasks.flaky", bind=True, retry_backoff=False, retry_delay=0.2, max_retries=3)
    def flaky(ctx: TaskContext, until: int) -> int:
        _ledger(ctx)
        if ctx.attempt < until:
            raise ctx.retry()
        return ctx.attempt

    @app.task(name="proj.tasks.headers", bind=True)
    def headers(ctx: TaskContext) -> dict[str, Any]:
        return {k: ctx.headers.get(k) for k in ("root_id", "parent_id", "group")} | {"attempt": ctx.attempt}

    return app


app = make_app(os.environ.get("RT_TEST_PREFIX", "celery-tests"))
