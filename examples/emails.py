"""The demo app: a sync and an async task on two queues, one that succeeds on its retry, one that always fails.

Run `make demo`, or a worker of your own: `rabbittask worker -A examples.emails:app`.
"""

from __future__ import annotations

import asyncio

from rabbittask import App, TaskContext

app = App("shop")  # broker from RABBITTASK_BROKER_URL, default amqp://guest:guest@localhost:5672/


@app.task(queue="emails")
def send_email(to: str, subject: str, body: str = "") -> str:
    """Pretend to send an email; return what was sent."""
    return f"sent {subject!r} to {to}"


@app.task(queue="thumbs")
async def thumbnail(image_id: int, size: int = 128) -> dict[str, int]:
    """Pretend to render a thumbnail."""
    await asyncio.sleep(0.01)
    return {"image_id": image_id, "size": size}


@app.task(queue="emails", bind=True, autoretry_for=(ConnectionError,), max_retries=3, retry_backoff=0.5)
def charge(ctx: TaskContext, order_id: int) -> str:
    """A flaky payment gateway: the first attempt fails and is retried on the broker's delay ladder."""
    if ctx.attempt == 1:
        raise ConnectionError("payment gateway timed out")
    return f"order {order_id} charged on attempt {ctx.attempt}"


@app.task(queue="emails")
def import_orders(path: str) -> int:
    """Always fails (not a retryable error): the message ends in emails.dlq with the reason."""
    raise ValueError(f"{path}: line 3: price 'abc' is not a number")
