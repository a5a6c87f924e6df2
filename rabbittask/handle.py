"""TaskHandle: what `.delay()` returns, and how it reads the task's result from the result backend.

A blocking wait for a result from inside a running task is refused here (`refuse_wait_in_task`): the
awaited task may need the thread, process or prefetch slot the waiting one holds.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

from rabbittask.context import running
from rabbittask.errors import ConfigError, TaskError, WaitInTaskRefused
from rabbittask.results.record import FAILURE, PENDING, SUCCESS, Status, decode_result, status_of

if TYPE_CHECKING:
    from rabbittask.app import App
    from rabbittask.progress import Progress
    from rabbittask.results.backend import ResultBackend

R = TypeVar("R", covariant=True)  # what the task returns (for an `async def` task, what it awaits to)


PROGRESS_IDLE_S = 0.3  # the end of the stream: nothing new came for this long


@dataclass(frozen=True, slots=True)
class TaskHandle(Generic[R]):
    """What `.delay()` returns: the id of the confirmed task message and where it went.

    `TaskHandle[R]` carries the task's return type, so a type checker knows what `get()` returns
    (for an `async def` task, what its coroutine returns).

    With a result backend (`result_backend=` on the app), it also reads the task's result:
    `get()`/`aget()` wait for it; `state` (or `status`) says PENDING, SUCCESS or FAILURE, and
    `ready()`, `successful()`, `failed()` ask the same; `forget()` deletes it.
    """

    id: str
    task_name: str
    queue: str
    app: App | None = field(default=None, repr=False, compare=False)
    duplicate: bool = False
    """True when the task was not sent: a task with `unique_for` was sent with the same key within its window."""

    def _backend(self) -> ResultBackend:
        if self.app is None:
            raise ConfigError(f"handle of task {self.task_name!r} (id {self.id}) has no app to read results from")
        return self.app.result_backend_for(self.task_name)

    def _timeout(self, timeout: float | None) -> TimeoutError:
        within = "" if timeout is None else f" within {timeout:g} s"
        return TimeoutError(f"no result for task {self.task_name!r} (id {self.id}){within}")

    @overload
    def get(self, timeout: float | None = None, *, propagate: Literal[True] = True) -> R: ...
    @overload
    def get(self, timeout: float | None = None, *, propagate: bool) -> R | TaskError: ...

    def get(self, timeout: float | None = None, *, propagate: bool = True) -> Any:
        """Wait for the result (at most `timeout` seconds; None: no limit) and return it.

        A failed task raises `TaskError` with the remote type, message and traceback (also an instance
        of the remote builtin type: `except ValueError` works); `propagate=False` returns that error
        instead. No result in time raises `TimeoutError`. Inside a running task this blocking wait is
        refused (`WaitInTaskRefused`), unless the app allows it (`allow_join_in_task`).
        """
        if self.app is not None:
            refuse_wait_in_task(
                self.app, f"the result of task {self.task_name!r} (id {self.id}) with .get()", "await handle.aget()"
            )
        data = self._backend().wait(self.id, timeout)
        if data is None:
            raise self._timeout(timeout)
        return _result(data, propagate)

    @overload
    async def aget(self, timeout: float | None = None, *, propagate: Literal[True] = True) -> R: ...
    @overload
    async def aget(self, timeout: float | None = None, *, propagate: bool) -> R | TaskError: ...

    async def aget(self, timeout: float | None = None, *, propagate: bool = True) -> Any:
        """Async twin of `get`."""
        data = await self._backend().await_(self.id, timeout)
        if data is None:
            raise self._timeout(timeout)
        return _result(data, propagate)

    @property
    def status(self) -> Status:
        """PENDING (no result stored yet, or expired), SUCCESS or FAILURE."""
        data = self._backend().fetch(self.id)
        return PENDING if data is None else status_of(data)

    @property
    def state(self) -> Status:
        """The same as `status` (Celery's name for it)."""
        return self.status

    def ready(self) -> bool:
        """True once the task finished, succeeded or failed (its result is stored)."""
        return self.status is not PENDING

    def successful(self) -> bool:
        """True if the task finished and succeeded."""
        return self.status is SUCCESS

    def failed(self) -> bool:
        """True if the task finished and failed (it was dead-lettered)."""
        return self.status is FAILURE

    async def astatus(self) -> Status:
        """Async twin of `status`."""
        data = await self._backend().afetch(self.id)
        return PENDING if data is None else status_of(data)

    def revoke(self, *, terminate: bool = False) -> None:
        """Revoke this task: if it has not started it never runs (see `app.control.revoke`)."""
        self._app("revoke it").control.revoke(self.id, terminate=terminate)

    async def arevoke(self, *, terminate: bool = False) -> None:
        """Async twin of `revoke`."""
        await self._app("revoke it").control.arevoke(self.id, terminate=terminate)

    def _app(self, doing: str) -> App:
        if self.app is None:
            raise ConfigError(f"handle of task {self.task_name!r} (id {self.id}) has no app to {doing} with")
        return self.app

    def forget(self) -> None:
        """Delete the stored result now, before it expires."""
        self._backend().forget(self.id)

    async def aforget(self) -> None:
        """Async twin of `forget`."""
        await self._backend().aforget(self.id)

    def progress(self, within_s: float = 3600.0) -> Progress | None:
        """The task's latest `ctx.progress()` report, or None if it made none in the last `within_s` seconds.

        Read from the app's history stream (`history` on, the default): a read of what the stream
        holds for that time, which takes at least a third of a second. A task run eagerly in this
        process answers from memory.
        """
        from rabbittask import progress

        here = progress.local(self.id)
        if here is not None:
            return here
        if self.app is None:
            raise ConfigError(f"handle of task {self.task_name!r} (id {self.id}) has no app to read progress from")
        from rabbittask.history.stream import read

        since = datetime.datetime.fromtimestamp(time.time() - within_s, datetime.UTC)
        latest: dict[str, Any] | None = None
        for message in read(self.app.settings, since, idle_s=PROGRESS_IDLE_S, routing_prefix="task.progress."):
            for event in message.get("events", ()):
                if isinstance(event, dict) and event.get("id") == self.id:
                    latest = event
        return progress.Progress.of(latest) if latest is not None else None


def _result(data: bytes, propagate: bool) -> Any:
    try:
        return decode_result(data)
    except TaskError as e:
        if propagate:
            raise
        return e


def refuse_wait_in_task(app: App, waits_for: str, async_way: str) -> None:
    """Raise `WaitInTaskRefused` if a task runs in this context and the app does not allow blocking waits."""
    run = running.get()
    if run is None or app.settings.allow_join_in_task or app.clients.local is not None:
        return  # not in a task, allowed, or eager mode / a StubBroker: tasks run here, nothing waits on a worker
    name, task_id = run
    raise WaitInTaskRefused(
        f"task {name!r} (id {task_id}) waits for {waits_for} while it runs: a blocking wait inside a task can "
        "deadlock its worker, because the task it waits for may need the thread, process or prefetch slot this "
        "one holds. Instead send the work with .delay() and return (let that task carry it on), or in an async "
        f"task use `{async_way}`. To wait anyway, where the awaited task runs on other workers, set "
        "allow_join_in_task=True on the App (RABBITTASK_ALLOW_JOIN_IN_TASK=true)."
    )
