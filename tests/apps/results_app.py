"""Test app for results: RPC and the result backend.

Queues come from RT_TEST_PREFIX; a worker gets its result settings from the environment as a user's
would (RABBITTASK_RESULT_BACKEND, RABBITTASK_RESULT_EXPIRES_S, ...), the test process as arguments.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from rabbittask import App


class Opaque:
    """A return value JSON cannot carry."""


def make_app(prefix: str, broker_url: str | None = None, result_backend: str | None = None, **settings: Any) -> App:
    if result_backend:
        settings["result_backend"] = result_backend
    app = App("results-tests", broker_url=broker_url, **settings)

    @app.task(queue=f"{prefix}.sync", name="results.echo")
    def echo(value: Any) -> Any:
        return value

    @app.task(queue=f"{prefix}.aio", name="results.aecho")
    async def aecho(value: Any, sleep_s: float = 0.0) -> Any:
        await asyncio.sleep(sleep_s)
        return value

    @app.task(queue=f"{prefix}.sync", name="results.boom")
    def boom(why: str) -> None:
        raise ValueError(f"boom: {why}")

    @app.task(queue=f"{prefix}.aio", name="results.aboom")
    async def aboom(key: str) -> None:
        raise KeyError(key)

    @app.task(queue=f"{prefix}.sync", name="results.slow")
    def slow(sleep_s: float) -> str:
        time.sleep(sleep_s)
        return "late"

    @app.task(queue=f"{prefix}.sync", name="results.opaque")
    def opaque() -> Opaque:
        return Opaque()

    @app.task(queue=f"{prefix}.sync", name="results.quiet", ignore_result=True)
    def quiet(value: int) -> int:
        return value

    return app


app = make_app(os.environ.get("RT_TEST_PREFIX", "results"))
