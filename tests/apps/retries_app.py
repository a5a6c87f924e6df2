"""Test app for retries, delays and dead letters; queue names come from RT_TEST_PREFIX so tests stay isolated.

Every run of a task appends a line to the ledger file `RT_TEST_LEDGER/<prefix>`:
`<name> <tag> attempt=<n> t=<epoch seconds>`, which is how tests see runs, attempts and timing.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from rabbittask import App, Retry, TaskContext


class Flaky(Exception):
    """What the flaky tasks raise."""


def make_app(prefix: str, broker_url: str | None = None) -> App:
    """Build the app; the test process and the worker subprocess build the same one."""
    app = App("retries-tests", broker_url=broker_url, retry_jitter=False, delivery_limit=3)
    ledger = Path(os.environ.get("RT_TEST_LEDGER", "/tmp/rt-ledger")) / prefix
    main, classic = f"{prefix}.main", f"{prefix}.classic"

    def note(name: str, tag: str, attempt: int = 1) -> None:
        ledger.parent.mkdir(parents=True, exist_ok=True)
        with open(ledger, "a") as f:
            f.write(f"{name} {tag} attempt={attempt} t={time.time():.3f}\n")

    def runs(name: str, tag: str) -> int:
        if not ledger.exists():
            return 0
        return sum(1 for line in ledger.read_text().splitlines() if line.startswith(f"{name} {tag} "))

    @app.task(queue=main, name="retries.flaky", bind=True, max_retries=3, retry_backoff=0.5, autoretry_for=(Flaky,))
    def flaky(ctx: TaskContext, tag: str, failures: int) -> str:
        note("flaky", tag, ctx.attempt)
        if ctx.attempt <= failures:
            raise Flaky(f"failure {ctx.attempt} of {failures}")
        return tag

    @app.task(queue=main, name="retries.always_fails", max_retries=2, retry_backoff=0.2, autoretry_for=(Flaky,))
    def always_fails(tag: str) -> None:
        note("always_fails", tag)
        if runs("always_fails", tag) <= 3 or not os.environ.get("RT_TEST_HEAL"):
            raise Flaky(f"still broken: {tag}")

    @app.task(queue=main, name="retries.explicit", bind=True, max_retries=5)
    async def explicit(ctx: TaskContext, tag: str, countdown: float, times: int) -> None:
        await asyncio.sleep(0)
        note("explicit", tag, ctx.attempt)
        if ctx.attempt <= times:
            try:
                raise KeyError(tag)
            except KeyError as e:
                raise ctx.retry(countdown=countdown, exc=e) from e

    @app.task(queue=main, name="retries.plain_retry", max_retries=1)
    def plain_retry(tag: str) -> None:
        note("plain_retry", tag)
        raise Retry(0.1)

    @app.task(queue=main, name="retries.record")
    def record(tag: str) -> str:
        note("record", tag)
        return tag

    @app.task(queue=classic, name="retries.classic_flaky", queue_type="classic", max_retries=2, retry_backoff=0.2)
    def classic_flaky(tag: str) -> None:
        note("classic_flaky", tag)
        if runs("classic_flaky", tag) < 2:
            raise Retry()

    @app.task(queue=main, name="retries.crash")
    def crash(tag: str) -> None:
        note("crash", tag)
        os._exit(3)  # a worker that dies mid-task: no ack, no dead letter of its own

    @app.task(queue=classic, name="retries.classic_crash", queue_type="classic")
    def classic_crash(tag: str) -> None:
        note("classic_crash", tag)
        os._exit(3)

    return app


app = make_app(os.environ.get("RT_TEST_PREFIX", "retries"))
