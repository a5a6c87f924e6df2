"""`MemoryBackend`: where results go while an app runs in eager mode or under a `StubBroker`.

The worker's `Settler` stores each result record here as it would in Redis, and `TaskHandle.get()`
reads it back with `decode_result`, so a failure comes back as the same `TaskError` a caller of a
real worker gets. Records expire on the stub's clock (`result_expires_s`). Waiting for a record
that is not there yet runs the stub until it is: `handle.get()` inside `with StubBroker(app)` works
without a `run_until_idle()` first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rabbittask.results.backend import ResultBackend

if TYPE_CHECKING:
    from rabbittask.testing.stub import StubBroker


class MemoryBackend(ResultBackend):
    """Result records in a dict, on the stub's clock; waiting runs the stub."""

    def __init__(self, stub: StubBroker) -> None:
        super().__init__("memory://")
        self.stub = stub
        self.records: dict[str, tuple[bytes, float]] = {}  # task id -> (record, expires at)

    def store(self, task_id: str, record: bytes, expires_s: float) -> None:
        self.records[task_id] = (record, self.stub.now() + expires_s)

    def fetch(self, task_id: str) -> bytes | None:
        found = self.records.get(task_id)
        if found is None or found[1] <= self.stub.now():
            return None
        return found[0]

    def forget(self, task_id: str) -> None:
        self.records.pop(task_id, None)

    def wait(self, task_id: str, timeout_s: float | None) -> bytes | None:
        """The record, running the stub (and its clock, at most `timeout_s`) until there is one."""
        if (record := self.fetch(task_id)) is not None:
            return record
        self.stub.run_until(lambda: self.fetch(task_id) is not None, timeout_s)
        return self.fetch(task_id)

    async def astore(self, task_id: str, record: bytes, expires_s: float) -> None:
        self.store(task_id, record, expires_s)

    async def afetch(self, task_id: str) -> bytes | None:
        return self.fetch(task_id)

    async def aforget(self, task_id: str) -> None:
        self.forget(task_id)

    async def await_(self, task_id: str, timeout_s: float | None) -> bytes | None:
        """Async twin of `wait`."""
        if (record := self.fetch(task_id)) is not None:
            return record
        await self.stub.arun_until(lambda: self.fetch(task_id) is not None, timeout_s)
        return self.fetch(task_id)
