"""The demo app: a sync and an async task on two queues (run `make demo`)."""

from __future__ import annotations

import asyncio

from rabbittask import App

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
