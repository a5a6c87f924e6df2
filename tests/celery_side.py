"""The Celery side of the interop tests: a real Celery app (producer and worker) on the test broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from celery import Celery

from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent


def _ledger(task_id: str) -> None:
    path = os.environ.get("RT_LEDGER")
    if path:
        with open(path, "a") as f:
            f.write(f"{task_id} 1 celery\n")


def celery_app(broker_url: str, queue: str, backend: str | None = "rpc://", **conf: Any) -> Celery:
    """A Celery app whose default queue is `queue`, JSON only, with the tasks of tests/apps/celery_app.py."""
    app = Celery("proj", broker=broker_url, backend=backend)
    app.conf.update(
        task_default_queue=queue,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        **conf,
    )

    @app.task(name="proj.tasks.add", shared=False, bind=True)
    def add(self: Any, x: int, y: int) -> int:
        _ledger(self.request.id)
        return x + y

    @app.task(name="proj.tasks.fail", shared=False)
    def fail(why: str) -> None:
        raise ValueError(f"boom: {why}")

    @app.task(name="proj.tasks.flaky", shared=False)
    def flaky(until: int) -> int:
        return until

    @app.task(name="proj.tasks.headers", shared=False)
    def headers() -> dict[str, Any]:
        return {}

    return app


def close(app: Celery) -> None:
    """Close a Celery app and the connection its result consumer opened (else a ResourceWarning fails the run)."""
    consumer = getattr(app.backend, "result_consumer", None)
    if consumer is not None and getattr(consumer, "_consumer", None) is not None:
        consumer.stop()
    elif consumer is not None and getattr(consumer, "_pubsub", None) is not None:
        consumer.stop()
    client = getattr(app.backend, "client", None)
    if client is not None:
        client.close()
    app.close()


class CeleryWorker:
    """A real `celery worker` process (`pool`: solo or prefork) on `queue`, with tests/apps/celery_proj.py's app."""

    def __init__(
        self, broker_url: str, queue: str, log: Path, *, pool: str, backend: str = "", ledger: str = ""
    ) -> None:
        env = {
            **os.environ,
            "RT_BROKER": broker_url,
            "RT_TEST_PREFIX": queue,
            "RT_BACKEND": backend,
            "RT_LEDGER": ledger,
        }
        env["PYTHONPATH"] = str(ROOT)
        self.log_path = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.apps.celery_proj:app", "worker", "-P", pool, "-c", "2",
             "-Q", queue, "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "info"],
            cwd=ROOT, env=env, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        wait_until(lambda: "ready." in self.log() or self.proc.poll() is not None, 60, lambda: self.log()[-2000:])
        assert self.proc.poll() is None, self.log()[-3000:]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._out.close()
