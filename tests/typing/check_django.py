"""What a type checker says about a `DjangoApp`'s tasks (see check_tasks.py): never run, only checked."""

from __future__ import annotations

from typing import assert_type

from rabbittask.contrib.django import DjangoApp, DjangoTask

app = DjangoApp("typing")


@app.task(queue="notes")
def process_note(note_id: int) -> int:
    return note_id


def on_commit() -> None:
    task: DjangoTask[[int], int] = process_note  # a DjangoTask, with its parameters and result
    del task
    assert_type(process_note.delay_on_commit(7), str)
    process_note.delay_on_commit("7")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    process_note.apply_async_on_commit((7,), using="default", countdown=5)
    process_note.apply_async_on_commit((7,), countdown="soon")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    assert_type(process_note.call(7), int)
