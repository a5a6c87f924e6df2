# A task that needs another task's work (docs/calling.md). Worker: rabbittask worker -A waiting:app
from rabbittask import App, TaskError

app = App("orders")


@app.task(queue="orders")
def invoice(order_id: int) -> str:
    return f"invoice for order {order_id}"


# --8<-- [start:refused]
@app.task(queue="orders")
def place_order_and_wait(order_id: int) -> str:
    return invoice.call(order_id, timeout=30)  # refused: WaitInTaskRefused, instead of a worker stuck for 30 s


# --8<-- [end:refused]


# --8<-- [start:instead]
@app.task(queue="orders")
def place_order(order_id: int) -> str:
    invoice.delay(order_id)  # hand the rest on and return: the invoice task carries the work on
    return f"order {order_id} placed"


@app.task(queue="orders")
async def place_order_async(order_id: int) -> str:
    return await invoice.acall(order_id, timeout=30)  # an async task may await: the worker's loop keeps going


# --8<-- [end:instead]


if __name__ == "__main__":
    print(place_order.call(1, timeout=10))
    print(place_order_async.call(2, timeout=10))
    try:
        place_order_and_wait.call(3, timeout=10)
    except TaskError as e:
        print(e.type_name)  # WaitInTaskRefused
    app.close()
