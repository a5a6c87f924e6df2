# Logging from tasks (docs/workers.md). Worker: rabbittask worker -A task_logging:app   Then: python task_logging.py
# --8<-- [start:logger]
from rabbittask import App, get_task_logger

app = App("shop")
log = get_task_logger(__name__)


@app.task(queue="billing")
def charge(order_id: int) -> None:
    log.info("charging order %d", order_id)  # the worker's log: ... task_logging: [task_logging.charge 3f2c...] ...


# --8<-- [end:logger]


if __name__ == "__main__":
    print(charge.delay(7).id)
    app.close()
