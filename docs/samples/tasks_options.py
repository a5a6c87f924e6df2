# Declaring tasks and their options (docs/tasks.md). Run it: python tasks_options.py
from smtplib import SMTPException

from rabbittask import App, ConfigError, SoftTimeLimitExceeded, TaskContext

app = App("options-tour")


# --8<-- [start:basic]
@app.task  # name "<module>.ping", queue "default"
def ping() -> str:
    return "pong"


@app.task(queue="mail", name="mail.send", max_retries=5, autoretry_for=(SMTPException,))
def send(to: str, subject: str) -> None: ...


@app.task(queue="images")  # an async task runs on the worker's event loop
async def resize(image_id: int, width: int = 512) -> dict[str, int]:
    return {"image_id": image_id, "width": width}


# --8<-- [end:basic]


# --8<-- [start:bind]
@app.task(bind=True, max_retries=3)
def fetch(ctx: TaskContext, url: str) -> str:
    if ctx.redelivered:  # its worker died while running it: it may have run, in part
        print(f"task {ctx.id}: delivered again, checking what was done")
    return f"fetched {url} on attempt {ctx.attempt}"


# --8<-- [end:bind]


# --8<-- [start:limits]
@app.task(time_limit=60, soft_time_limit=50)
def crunch(rows: int) -> int:
    try:
        return sum(range(rows))
    except SoftTimeLimitExceeded:  # raised inside the task at 50 s: clean up, then let it go
        raise


# --8<-- [end:limits]


# --8<-- [start:queues]
@app.task(queue="reports", queue_type="classic", max_priority=10)  # classic: priorities on any RabbitMQ
def report(day: str) -> None: ...


@app.task(queue="imports", single_active_consumer=True, max_length=10_000, overflow="reject-publish")
def import_row(row: dict[str, str]) -> None:  # one consumer at a time: rows are imported in order
    ...


# --8<-- [end:queues]

if __name__ == "__main__":
    # --8<-- [start:local]
    print(ping())  # calling a task runs it here, like the function it is: "pong"
    print(fetch("https://example.com"))  # bind=True: a context of a first run is made up
    # --8<-- [end:local]
    # --8<-- [start:mistakes]
    for n, options in enumerate([{"retries": 3}, {"qeue": "mail"}, {"time_limit": "1 minute"}]):
        try:
            app.task(name=f"broken{n}", **options)(ping.fn)
        except ConfigError as e:
            print(e)
    # --8<-- [end:mistakes]
