"""A tiny shop: the app the samples of docs/testing.md test."""

from __future__ import annotations

import asyncio

from rabbittask import App, TaskContext

app = App("shop", exchange="shop-sample")


class PaymentDeclined(Exception):
    """The card was refused: retrying will not help."""


class GatewayDown(Exception):
    """The payment provider did not answer: worth a retry."""


class Gateway:
    """Stands in for a payment provider; its first `failures` charges fail with GatewayDown."""

    def __init__(self) -> None:
        self.failures = 0
        self.charged: list[tuple[int, int]] = []

    def charge(self, order_id: int, cents: int) -> None:
        if self.failures:
            self.failures -= 1
            raise GatewayDown(f"no answer for order {order_id}")
        self.charged.append((order_id, cents))


gateway = Gateway()


@app.task(queue="shop.emails")
def send_receipt(order_id: int, email: str) -> str:
    return f"receipt for order {order_id} sent to {email}"


@app.task(queue="shop.payments", bind=True, max_retries=3, retry_backoff=2.0, autoretry_for=(GatewayDown,))
def charge(ctx: TaskContext, order_id: int, cents: int, email: str) -> dict[str, int]:
    if cents <= 0:
        raise PaymentDeclined(f"cannot charge {cents} cents")
    gateway.charge(order_id, cents)
    send_receipt.delay(order_id, email)
    return {"order": order_id, "cents": cents, "attempt": ctx.attempt}


@app.task(queue="shop.emails")
async def remind(order_id: int) -> str:
    await asyncio.sleep(0)
    return f"reminder for order {order_id}"
