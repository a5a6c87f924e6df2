"""Test app for retries, delays and dead letters.

Queue names come from RT_TEST_PREFIX and the exchange (hence the delay ladder) from RT_TEST_EXCHANGE,
so tests stay isolated from each other and from other apps on the shared broker.

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


class Ledger:
    """One line per task run, in a file the test reads."""

    def __init__(self, prefix: str) -> None:
        self.path = Path(os.environ.get("RT_TEST_LEDGER", "/tmp/rt-ledger")) / prefix

    def note(self, name: str, tag: str, attempt: int = 1) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(f"{name} {tag} attempt={attempt} t={time.time():.3f}\n")

    def runs(self, name: str, tag: str) -> int:
        if not self.path.exists():
            return 0
        return sum(1 for line in self.path.read_text().splitlines() if line.startswith(f"{name} {tag} "))


def make_app(prefix: str, exchange: str, broker_url: str | None = None, **settings: object) -> App:
    """Build the app; the test process and the worker subprocess build the same one."""
    app = App(
        "retries-tests", broker_url=broker_url, exchange=exchange, retry_jitter=False, delivery_limit=3, **settings
    )
    ledger = Ledger(prefix)
    retrying_tasks(app, ledger, f"{prefix}.main", f"{prefix}.classic")
    crashing_tasks(app, ledger, f"{prefix}.main", f"{prefix}.classic")
    return app


def retrying_tasks(app: App, ledger: Ledger, main: str, classic: str) -> None:
    @app.task(queue=main, name="retries.flaky", bind=True, max_retries=3, retry_backoff=0.5, autoretry_for=(Flaky,))
    def flaky(ctx: TaskContext, tag: str, failures: int) -> str:
        ledger.note("flaky", tag, ctx.attempt)
        if ctx.attempt <= failures:
            raise Flaky(f"failure {ctx.attempt} of {failures}")
        return tag

    @app.task(
        queue=main, name="retries.always_fails", bind=True, max_retries=2, retry_backoff=0.2, autoretry_for=(Flaky,)
    )
    def always_fails(ctx: TaskContext, tag: str) -> None:
        ledger.note("always_fails", tag, ctx.attempt)
        if ledger.runs("always_fails", tag) <= 3 or not os.environ.get("RT_TEST_HEAL"):
            raise Flaky(f"still broken: {tag}")

    @app.task(queue=main, name="retries.explicit", bind=True, max_retries=5)
    async def explicit(ctx: TaskContext, tag: str, countdown: float, times: int) -> None:
        await asyncio.sleep(0)
        ledger.note("explicit", tag, ctx.attempt)
        if ctx.attempt <= times:
            try:
                raise KeyError(tag)
            except KeyError as e:
                raise ctx.retry(countdown=countdown, exc=e) from e

    @app.task(queue=main, name="retries.record")
    def record(tag: str) -> str:
        ledger.note("record", tag)
        return tag

    @app.task(queue=classic, name="retries.classic_record", queue_type="classic")
    def classic_record(tag: str) -> str:
        ledger.note("classic_record", tag)
        return tag

    @app.task(queue=classic, name="retries.classic_flaky", queue_type="classic", max_retries=2, retry_backoff=0.2)
    def classic_flaky(tag: str) -> None:
        ledger.note("classic_flaky", tag)
        if ledger.runs("classic_flaky", tag) < 2:
            raise Retry()


def crashing_tasks(app: App, ledger: Ledger, main: str, classic: str) -> None:
    @app.task(queue=main, name="retries.crash")
    def crash(tag: str) -> None:
        ledger.note("crash", tag)
        os._exit(3)  # a worker that dies mid-task: no ack, no dead letter of its own

    @app.task(queue=classic, name="retries.classic_crash", queue_type="classic")
    def classic_crash(tag: str) -> None:
        ledger.note("classic_crash", tag)
        os._exit(3)


app = make_app(
    os.environ.get("RT_TEST_PREFIX", "retries"),
    os.environ.get("RT_TEST_EXCHANGE", "retries-tests"),
    delay_queue_type=os.environ.get("RT_TEST_DELAY_QUEUE_TYPE", "quorum"),
)
