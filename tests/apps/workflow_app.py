"""Test app for workflows: small tasks to chain, group and chord, and a ledger of callback runs.

Queues and the join queue come from RT_TEST_PREFIX; each run of a callback or error handler appends one
line to `<RT_TEST_LEDGER>/<pid>.jsonl`, so a test counts runs across worker processes.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from rabbittask import App, Reject, Retry, TaskContext


def _ledger(record: dict[str, Any]) -> None:
    directory = os.environ.get("RT_TEST_LEDGER")
    if not directory:
        return
    with open(os.path.join(directory, f"{os.getpid()}.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")


def read_ledger(directory: str) -> list[dict[str, Any]]:
    """Every record the workers wrote under `directory`."""
    records = []
    for name in sorted(os.listdir(directory)):
        if name.endswith(".jsonl"):
            with open(os.path.join(directory, name)) as f:
                records.extend(json.loads(line) for line in f if line.strip())
    return records


def make_app(prefix: str, broker_url: str | None = None, **settings: Any) -> App:
    app = App("workflow-tests", broker_url=broker_url, join_queue=f"{prefix}.join", **settings)
    q = f"{prefix}.wf"

    @app.task(queue=q, name="wf.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(queue=q, name="wf.double")
    def double(x: int) -> int:
        return 2 * x

    @app.task(queue=q, name="wf.square")
    def square(x: int) -> int:
        return x * x

    @app.task(queue=q, name="wf.label")
    def label(value: Any, prefix: str) -> str:
        return f"{prefix}:{value}"

    _callbacks(app, q)
    return app


def _callbacks(app: App, q: str) -> None:
    @app.task(queue=q, name="wf.noop")
    def noop(i: int) -> None:
        _ledger({"event": "member", "i": i, "t": time.time()})

    @app.task(queue=q, name="wf.sleepy")
    def sleepy(i: int, sleep_s: float, ledger: bool = False) -> int:
        time.sleep(sleep_s)
        if ledger:
            _ledger({"event": "member", "i": i, "t": time.time()})
        return i

    @app.task(queue=q, name="wf.reject")
    def reject(i: int) -> int:
        raise Reject(f"member {i} refuses")

    @app.task(queue=q, name="wf.big")
    def big(n: int) -> str:
        return "x" * n

    @app.task(queue=q, name="wf.fails_once")
    def fails_once(x: int) -> int:
        marker = os.path.join(os.environ.get("RT_TEST_LEDGER", "/tmp"), f"fails-once-{x}")
        if not os.path.exists(marker):
            open(marker, "w").close()  # noqa: SIM115 - a marker file, closed at once
            raise Reject(f"{x} fails on its first run")
        return x + 1000

    @app.task(queue=q, name="wf.flaky", bind=True, max_retries=3, retry_backoff=False, retry_delay=0.2)
    def flaky(ctx: TaskContext, x: int) -> int:
        if ctx.attempt == 1:
            raise Retry(countdown=0.2)
        return x + 100

    @app.task(queue=q, name="wf.collect", bind=True)
    def collect(ctx: TaskContext, results: list[Any], tag: str = "") -> int:
        _ledger({"event": "callback", "id": ctx.id, "tag": tag, "results": results, "t": time.time()})
        return len(results)

    @app.task(queue=q, name="wf.alert", bind=True)
    def alert(ctx: TaskContext, failures: list[dict[str, Any]], tag: str = "") -> int:
        _ledger({"event": "on_error", "id": ctx.id, "tag": tag, "failures": failures})
        return len(failures)


app = make_app(os.environ.get("RT_TEST_PREFIX", "workflows"))
