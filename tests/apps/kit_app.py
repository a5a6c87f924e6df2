"""Test app of the test kit: a task per case that eager mode, the stub broker and a real worker must agree on.

Queue names come from RT_TEST_PREFIX and the exchange from RT_TEST_EXCHANGE, so a worker subprocess
builds the same app as the test that sends to it.
"""

from __future__ import annotations

import asyncio
import os
from datetime import datetime
from typing import Any

from rabbittask import App, Retry, TaskContext


class Flaky(Exception):
    """What the flaky task raises (and retries on)."""


def make_app(prefix: str = "kit", exchange: str = "kit-tests", broker_url: str | None = None, **settings: Any) -> App:
    app = App("kit-tests", broker_url=broker_url, exchange=exchange, retry_jitter=False, **settings)
    main, aio = f"{prefix}.main", f"{prefix}.aio"

    @app.task(queue=main, name="kit.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(queue=aio, name="kit.amul")
    async def amul(x: int, y: int) -> int:
        await asyncio.sleep(0)
        return x * y

    @app.task(queue=main, name="kit.boom")
    def boom(why: str) -> None:
        raise ValueError(f"boom: {why}")

    @app.task(queue=main, name="kit.flaky", bind=True, max_retries=3, retry_backoff=0.1, autoretry_for=(Flaky,))
    def flaky(ctx: TaskContext, failures: int) -> int:
        if ctx.attempt <= failures:
            raise Flaky(f"failure {ctx.attempt} of {failures}")
        return ctx.attempt

    @app.task(queue=main, name="kit.later", bind=True, max_retries=2)
    def later(ctx: TaskContext, countdown: float, times: int) -> int:
        if ctx.attempt <= times:
            raise ctx.retry(countdown=countdown)
        return ctx.attempt

    @app.task(queue=main, name="kit.echo")
    def echo(value: Any) -> Any:
        return value

    @app.task(queue=main, name="kit.weird")
    def weird() -> Any:
        return object()  # JSON cannot carry it

    @app.task(queue=main, name="kit.when", bind=True)
    def when(ctx: TaskContext, at: datetime) -> dict[str, Any]:
        return {"at": at.isoformat(), "type": type(at).__name__, "id": ctx.id, "queue": ctx.queue}

    @app.task(queue=main, name="kit.retry_forever", max_retries=None)
    def retry_forever() -> None:
        raise Retry(countdown=60)

    return app


app = make_app(os.environ.get("RT_TEST_PREFIX", "kit"), os.environ.get("RT_TEST_EXCHANGE", "kit-tests"))
