# Retries, delays and dead letters (docs/retries.md).
# Worker: rabbittask worker -A retries:app    Then: python retries.py
from rabbittask import App, Reject, Retry, TaskContext, TaskError

app = App("payments", retry_backoff=0.2)  # shorter waits than the default 1 s, for this example


class GatewayDown(Exception):
    pass


# --8<-- [start:autoretry]
@app.task(queue="payments", autoretry_for=(GatewayDown,), max_retries=5, bind=True)
def charge(ctx: TaskContext, order_id: int) -> str:
    if ctx.attempt < 3:  # the first two attempts fail: retried after ~0.2 s and ~0.4 s (back-off, jitter)
        raise GatewayDown("the payment gateway did not answer")
    return f"order {order_id} charged on attempt {ctx.attempt}"


# --8<-- [end:autoretry]


# --8<-- [start:explicit]
@app.task(queue="payments", bind=True)
def refund(ctx: TaskContext, order_id: int) -> str:
    if ctx.attempt == 1:
        raise Retry(countdown=0.5)  # or: raise ctx.retry(countdown=0.5, exc=e) to keep the cause
    return f"order {order_id} refunded"


# --8<-- [end:explicit]


# --8<-- [start:reject]
@app.task(queue="payments")
def settle(order_id: int) -> None:
    if order_id < 0:
        raise Reject(f"order {order_id} does not exist")  # dead-lettered at once, no retry


# --8<-- [end:reject]


if __name__ == "__main__":
    # --8<-- [start:run]
    print(charge.call(7, timeout=20))  # order 7 charged on attempt 3
    print(refund.call(8, timeout=20))  # order 8 refunded
    try:
        settle.call(-1, timeout=20)
    except TaskError as e:
        print(e)  # Reject: order -1 does not exist  (and the message is in payments.dlq)
    # --8<-- [end:run]
    app.close()
