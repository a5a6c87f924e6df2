"""What a type checker says about user code: checked by `mypy --strict` and `pyright` in `make check`.

This module is never run. Each line with an ignore comment is a mistake the checkers must catch: mypy
(`warn_unused_ignores`) and pyright (`reportUnnecessaryTypeIgnoreComment`) fail when one is no longer
needed, so a change that lets a wrong call through fails `make check`. `assert_type` pins the types
the checkers infer for the right calls.
"""

from __future__ import annotations

from typing import assert_type

from rabbittask import App, Signature, TaskContext, TaskError, TaskHandle

# --8<-- [start:tasks]
app = App("typing")


@app.task(queue="mail")
def send_email(to: str, subject: str, body: str = "") -> str:
    return f"sent {subject!r} to {to}"


@app.task
async def thumbnail(image_id: int, size: int = 128) -> dict[str, int]:
    return {"image_id": image_id, "size": size}


@app.task(bind=True, max_retries=3)
def charge(ctx: TaskContext, order_id: int) -> bool:
    return ctx.attempt > 0 and order_id > 0


# --8<-- [end:tasks]


# --8<-- [start:calls]
def sending() -> None:
    assert_type(send_email.delay("ada@example.com", "hi"), TaskHandle[str])
    send_email.delay(42)  # type: ignore[call-arg, arg-type]  # pyright: ignore[reportCallIssue]
    send_email.delay(42, "hi")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    send_email.delay("ada@example.com", "hi", bcc="x")  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    charge.delay(7)
    charge.delay("7")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    assert_type(charge.s(7), Signature[bool])


def results() -> None:
    assert_type(send_email.call("ada@example.com", "hi"), str)
    assert_type(send_email.call("ada@example.com", "hi", timeout=5), str)
    send_email.call(42)  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue]
    assert_type(thumbnail.call(7, size=64), dict[str, int])
    assert_type(send_email.delay("ada@example.com", "hi").get(timeout=10), str)
    assert_type(send_email.delay("ada@example.com", "hi").get(propagate=False), str | TaskError)
    assert_type(thumbnail.delay(7).get(), dict[str, int])
    assert_type(send_email.handle("an id").get(), str)
    length: int = send_email.call("ada@example.com", "hi")  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
    del length


async def async_results() -> None:
    assert_type(await thumbnail.acall(7), dict[str, int])
    assert_type(await send_email.acall("ada@example.com", "hi", timeout=5), str)
    await thumbnail.acall("7")  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue, reportArgumentType]
    handle = await thumbnail.adelay(7)
    assert_type(handle, TaskHandle[dict[str, int]])
    assert_type(await handle.aget(), dict[str, int])
    await thumbnail.adelay(size=64)  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue]


def signatures() -> None:
    sig = send_email.s("ada@example.com", "hi")
    assert_type(sig, Signature[str])
    assert_type(sig.delay().get(), str)
    send_email.si(42)  # type: ignore[call-arg, arg-type]  # pyright: ignore[reportCallIssue]
    thumbnail.si(7, size="big")  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue, reportArgumentType]
    app.schedule("nightly", thumbnail.s(7), cron="0 3 * * *")


def running_here() -> None:
    assert_type(send_email("ada@example.com", "hi"), str)  # calling the task runs the function in this process
    send_email(42)  # type: ignore[call-arg, arg-type]  # pyright: ignore[reportCallIssue]


# --8<-- [end:calls]
