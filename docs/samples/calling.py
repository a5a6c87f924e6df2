# Calling tasks and reading what they did (docs/calling.md). Needs a worker: rabbittask worker -A shop.tasks:app
import asyncio
from datetime import UTC, datetime, timedelta

from shop.tasks import app, send_email, thumbnail

from rabbittask import ArgumentsInvalid, TaskError

# --8<-- [start:delay]
handle = send_email.delay("ada@example.com", "hello")  # returns once the broker has confirmed it
print(handle.id, handle.task_name, handle.queue)  # the task id, and where the message went
# --8<-- [end:delay]

# --8<-- [start:apply_async]
send_email.apply_async(("ada@example.com", "reminder"), countdown=60)  # run in a minute, at the earliest
send_email.apply_async(
    ("ada@example.com", "report"),
    eta=datetime.now(UTC) + timedelta(hours=1),  # or at a time
    expires=3600 * 2,  # not run at all if no worker started it within two hours
    message_id="order-42-mail",  # your own id: a repeat is recognisable by it
)
# --8<-- [end:apply_async]

# --8<-- [start:validation]
try:
    send_email.delay(42)  # checked against the signature before anything is sent
except ArgumentsInvalid as e:
    print(e)  # invalid arguments for task 'shop.tasks.send_email': to: Input should be a valid string (got 42); ...
# --8<-- [end:validation]

# --8<-- [start:call]
print(send_email.call("bob@example.com", "hi", timeout=10))  # "sent 'hi' to bob@example.com"
try:
    thumbnail.call("seven", timeout=10)
except ArgumentsInvalid as e:
    print(e)
except TaskError as e:  # the task raised in the worker (also an instance of the builtin type it raised)
    print(e.type_name, e.remote_message, e.reason, e.remote_traceback)  # reason: "task raised", ...
except TimeoutError:  # no answer within 10 s: the task may still run
    pass
# --8<-- [end:call]


# --8<-- [start:async]
async def main() -> None:
    handle = await thumbnail.adelay(7)
    sizes = await asyncio.gather(*(thumbnail.acall(i, size=64, timeout=10) for i in range(3)))
    print(handle.id, sizes)
    await app.aclose()


asyncio.run(main())
# --8<-- [end:async]

# --8<-- [start:batch]
with app.batch():  # publishes stream to the broker; the confirms are awaited together on exit
    for n in range(100):
        send_email.delay(f"user{n}@example.com", "news")
# --8<-- [end:batch]

# --8<-- [start:send_task]
handle = app.send_task("shop.tasks.send_email", args=["ada@example.com", "by name"], queue="mail")
# --8<-- [end:send_task]
print("sent by name:", handle.id)
app.close()
