"""The Celery side of the interop tests: a real Celery app (producer and worker) on the test broker."""

from __future__ import annotations

from typing import Any

from celery import Celery


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

    @app.task(name="proj.tasks.add", shared=False)
    def add(x: int, y: int) -> int:
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
