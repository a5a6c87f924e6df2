"""Test app for the worker's log: tasks that succeed, retry, fail, log through a task logger, and wait on others.

Queues come from RT_TEST_PREFIX so tests stay isolated.
"""

from __future__ import annotations

import os

from rabbittask import App, TaskContext, get_task_logger

log = get_task_logger(__name__)


def make_app(prefix: str, broker_url: str | None = None) -> App:
    app = App("logs-tests", broker_url=broker_url, retry_backoff=False, retry_delay=0.2)

    @app.task(queue=f"{prefix}.main", name="logs.ok")
    def ok(x: int) -> int:
        return x

    @app.task(queue=f"{prefix}.aio", name="logs.aok")
    async def aok(x: int) -> int:
        return x

    @app.task(queue=f"{prefix}.main", name="logs.flaky", bind=True, max_retries=2, autoretry_for=(ConnectionError,))
    def flaky(ctx: TaskContext) -> str:
        if ctx.attempt == 1:
            raise ConnectionError("payment gateway refused")
        return "paid"

    @app.task(queue=f"{prefix}.main", name="logs.boom", max_retries=0)
    def boom(why: str) -> None:
        raise ValueError(f"cannot import: {why}")

    @app.task(queue=f"{prefix}.main", name="logs.charge")
    def charge(order_id: int) -> None:
        log.info("charging order %d", order_id)

    @app.task(queue=f"{prefix}.main", name="logs.joins")
    def joins() -> int:
        return ok.call(1, timeout=5)  # refused: a blocking wait inside a running task

    @app.task(queue=f"{prefix}.aio", name="logs.ajoins")
    async def ajoins() -> int:
        return ok.call(1, timeout=5)  # refused too: it would block the worker's event loop

    return app


app = make_app(os.environ.get("RT_TEST_PREFIX", "logs"))
