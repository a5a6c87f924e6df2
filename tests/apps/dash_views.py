"""Test app for the dashboard's control-plane views: a long async task, a retry that waits, a rate-limited task,
and a schedule ticking every second. Task names carry the prefix: rate-limit overrides outlive a test."""

from __future__ import annotations

import asyncio
import os

from rabbittask import App, Retry, TaskContext

LATER_S = 15.0  # the retry of `<prefix>.later` waits this long in the delay ladder


def make_app(prefix: str, broker_url: str | None = None) -> App:
    """Build the app; the test process, the worker and the dashboard subprocesses build the same one."""
    # An exchange of its own: its history stream holds this test's events only.
    app = App(f"dash-views-{prefix}", broker_url=broker_url, exchange=f"{prefix}.x", join_queue=f"{prefix}.join")
    queue = f"{prefix}.views"

    @app.task(queue=queue, name=f"{prefix}.crunch")
    async def crunch(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    @app.task(queue=queue, name=f"{prefix}.later", bind=True)
    def later(ctx: TaskContext, order: int) -> int:
        if ctx.attempt == 1:
            raise Retry(countdown=LATER_S)
        return order

    @app.task(queue=queue, name=f"{prefix}.throttled", rate_limit="5/s")
    def throttled(n: int) -> int:
        return n

    @app.task(queue=queue, name=f"{prefix}.tick")
    def tick() -> None:
        return None

    app.schedule(f"{prefix}-tick", tick.s(), every=1)
    return app


app = make_app(os.environ.get("RT_TEST_PREFIX", "dash-views"))
