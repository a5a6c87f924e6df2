"""App: the task registry, its settings, the `@app.task` decorator and the publishing entry points."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import re
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, TypeVar, overload

from pika.adapters.blocking_connection import BlockingChannel

from rabbittask import tracing
from rabbittask.context import TaskContext
from rabbittask.errors import BatchNotConfirmed, ConfigError, TaskNotFound
from rabbittask.message import Outgoing
from rabbittask.publish.aio import AsyncPublisher, Pipeline
from rabbittask.publish.batch import SyncBatch
from rabbittask.publish.declare import declare_sync
from rabbittask.publish.sync import SyncPublisher
from rabbittask.results.backend import ResultBackend, load_backend
from rabbittask.results.rpc import AsyncRpc
from rabbittask.results.sync_rpc import SyncRpc
from rabbittask.retry import RETRY_OPTIONS, policy_for
from rabbittask.settings import QueueType, Settings
from rabbittask.task import Signature, Task, TaskHandle
from rabbittask.topology import (
    Declaration,
    ExchangeDecl,
    Overflow,
    QueueSpec,
    check_delay_queue_name,
    declarations,
    delay_declarations,
    events_exchange_name,
)

if TYPE_CHECKING:
    from rabbittask.beat.entry import CatchUp, ScheduleEntry

P = ParamSpec("P")
R = TypeVar("R")

TASK_OPTIONS = frozenset({"name", "queue", "queue_type", "max_priority", "delivery_limit", "ignore_result"})
# Retries (issue 6): the retry policy's fields, and bind=True for a TaskContext first argument.
TASK_OPTIONS |= RETRY_OPTIONS | {"bind"}
# Per-queue options beyond the core ones (topology as code, issue 8).
TASK_OPTIONS |= {"max_length", "overflow", "single_active_consumer", "message_ttl_ms"}
# Time limits (issue 4), in seconds.
TASK_OPTIONS |= {"time_limit", "soft_time_limit"}

_LAZY_INIT = threading.Lock()  # builds the shared RPC client and the backend once, whichever thread asks first
_TASK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,199}$")


class App:
    """A rabbittask application: tasks, the queues they map to, and how to reach the broker."""

    def __init__(
        self,
        name: str,
        broker_url: str | None = None,
        *,
        autoretry_for: tuple[type[BaseException], ...] = (),
        **settings: Any,
    ) -> None:
        """`settings` are `Settings` fields; `autoretry_for` are exceptions every task retries on."""
        if broker_url is not None:
            settings["broker_url"] = broker_url
        try:
            self.settings = Settings(**settings)
        except ValueError as e:
            raise ConfigError(f"invalid settings for app {name!r}: {e}") from None
        self.name = name
        self.autoretry_for = tuple(autoretry_for)
        policy_for(self.settings, self.autoretry_for, {})  # refuses a bad app-wide retry setting now
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.queues: dict[str, QueueSpec] = {}
        self.schedules: dict[str, ScheduleEntry] = {}
        self._local = threading.local()
        self._aio: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncPublisher] = weakref.WeakKeyDictionary()
        self._abatch: contextvars.ContextVar[Pipeline | None] = contextvars.ContextVar("abatch", default=None)
        self._declared_pid = 0
        # Held strongly (one per loop): a guard that is only weakly referenced is collected at once,
        # and its finalizer would close the loop's connections right after they opened.
        self._guards: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncIterator[None]] = (
            weakref.WeakKeyDictionary()
        )
        self._arpc: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncRpc] = weakref.WeakKeyDictionary()
        self._rpc: SyncRpc | None = None
        self._backend: ResultBackend | None = None
        self.worker_process_init: list[Callable[[], None]] = []
        if self.settings.otel:
            tracing.enable()

    def __repr__(self) -> str:
        return f"<App {self.name} tasks={len(self.tasks)}>"

    # -- declaring -------------------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self, fn: None = None, /, *, bind: Literal[True], **options: Any
    ) -> Callable[[Callable[Concatenate[TaskContext, P], R]], Task[P, R]]: ...

    @overload
    def task(self, fn: None = None, /, **options: Any) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(self, fn: Callable[P, R] | None = None, /, **options: Any) -> Any:
        """Declare a task: `@app.task` or `@app.task(queue="emails", name="send", max_retries=5)`.

        `bind=True` passes a `TaskContext` (id, attempt, headers, `.retry()`) as the first argument.
        """
        unknown = set(options) - TASK_OPTIONS
        if unknown:
            raise ConfigError(
                f"unknown option(s) for @app.task: {', '.join(sorted(unknown))}; "
                f"known options are {', '.join(sorted(TASK_OPTIONS))}"
            )

        def decorate(f: Callable[P, R]) -> Task[P, R]:
            return self._register(f, **options)

        return decorate(fn) if fn is not None else decorate

    def _register(
        self,
        fn: Callable[P, R],
        name: str | None = None,
        queue: str | None = None,
        queue_type: QueueType | None = None,
        max_priority: int | None = None,
        delivery_limit: int | None = None,
        max_length: int | None = None,
        overflow: Overflow | None = None,
        single_active_consumer: bool = False,
        message_ttl_ms: int | None = None,
        ignore_result: bool = False,
        bind: bool = False,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
        **retry_options: Any,
    ) -> Task[P, R]:
        name = name or f"{fn.__module__}.{fn.__qualname__.replace('<locals>.', '')}"
        if not _TASK_NAME.match(name):
            raise ConfigError(f"task name {name!r} is not allowed: use letters, digits and _ . : - (max 200)")
        if name in self.tasks:
            raise ConfigError(f"task name {name!r} is declared twice: give one of them name=...")
        spec = QueueSpec(
            name=queue or self.settings.default_queue,
            queue_type=queue_type or self.settings.queue_type,
            delivery_limit=delivery_limit or self.settings.delivery_limit,
            max_priority=max_priority,
            max_length=max_length,
            overflow=overflow,
            single_active_consumer=single_active_consumer,
            message_ttl_ms=message_ttl_ms,
        )
        queue_options = (queue_type, max_priority, delivery_limit, max_length, overflow, message_ttl_ms)
        known = self.queues.get(spec.name)
        if (
            known is not None
            and known != spec
            and (single_active_consumer or any(o is not None for o in queue_options))
        ):
            raise ConfigError(
                f"queue {spec.name!r} is declared with different options by two tasks: {known} and {spec}"
            )
        check_delay_queue_name(spec.name)
        retry = policy_for(self.settings, self.autoretry_for, retry_options)
        self.queues.setdefault(spec.name, spec)
        task: Task[P, R] = Task(self, fn, name, spec.name, retry=retry, bind=bind)
        task.ignore_result = ignore_result
        task.set_time_limits(time_limit, soft_time_limit)
        self.tasks[name] = task
        return task

    def schedule(
        self,
        name: str,
        target: Signature | Task[Any, Any],
        *,
        cron: str | None = None,
        every: timedelta | float | None = None,
        tz: str = "UTC",
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        queue: str | None = None,
        expires: timedelta | float | None = None,
        catch_up: CatchUp = "skip",
        catch_up_limit: int = 100,
        grace_s: float = 30.0,
    ) -> ScheduleEntry:
        """Send `target` periodically: `app.schedule("nightly", report.s(day="yesterday"), cron="0 3 * * *")`.

        `cron` (5 fields, in time zone `tz`) or `every` (a timedelta or seconds, counted from the Unix
        epoch). `expires`: a tick no worker started this long after it was sent is dropped. `catch_up`:
        what to do with ticks missed (more than `grace_s` late) while no scheduler ran: `skip` them,
        send the latest `once`, or send `all` (the latest `catch_up_limit`). `rabbittask beat` runs them;
        see docs/scheduling.md.
        """
        from rabbittask.beat.build import build_entry  # croniter is loaded only by apps that schedule

        if name in self.schedules:
            raise ConfigError(f"schedule {name!r} is declared twice in app {self.name!r}")
        entry = build_entry(
            self,
            name,
            target,
            cron=cron,
            every=every,
            tz=tz,
            args=args,
            kwargs=kwargs,
            queue=queue,
            expires=expires,
            catch_up=catch_up,
            catch_up_limit=catch_up_limit,
            grace_s=grace_s,
        )
        if entry.queue not in self.queues:  # a queue no task names: declared like a task's default queue
            self.queues[entry.queue] = QueueSpec(
                name=entry.queue, queue_type=self.settings.queue_type, delivery_limit=self.settings.delivery_limit
            )
        self.schedules[name] = entry
        return entry

    def get_task(self, name: str) -> Task[Any, Any]:
        """The task called `name`; raise `TaskNotFound` naming the known ones."""
        try:
            return self.tasks[name]
        except KeyError:
            raise TaskNotFound(f"task {name!r} is not registered in app {self.name!r}") from None

    def declarations(self, queues: list[str] | None = None) -> list[Declaration]:
        """What the broker must have for this app (or for some of its queues)."""
        specs = [self.queues[q] for q in queues] if queues else list(self.queues.values())
        exchange = self.settings.exchange
        decls = declarations(exchange, specs) + delay_declarations(
            exchange, [s.name for s in specs], self.settings.delay_queue_type
        )
        if not queues and self.settings.events:  # workers publish task events and heartbeats there
            decls.append(ExchangeDecl(events_exchange_name(exchange), "topic"))
        if self.schedules and not queues:
            from rabbittask.beat.state import state_declaration

            decls.append(state_declaration(exchange, self.name))
        return decls

    def declare(self) -> None:
        """Declare the app's whole topology on the broker now (it is also declared on first use)."""
        publisher = self._sync_publisher()
        publisher.close()
        self._declared_pid = 0
        publisher.open()

    def _declare_once(self, channel: BlockingChannel) -> None:
        if self._declared_pid != os.getpid() and self.settings.declare_topology:
            declare_sync(channel, self.declarations())
            self._declared_pid = os.getpid()

    # -- publishing ------------------------------------------------------------------------------

    def _sync_publisher(self) -> SyncPublisher:
        publisher: SyncPublisher | None = getattr(self._local, "publisher", None)
        if publisher is None or publisher.pid != os.getpid():
            publisher = SyncPublisher(self.settings, self._declare_once)
            self._local.publisher = publisher
        return publisher

    def on_worker_process_init(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Decorator: call `fn()` in each worker child after the fork, before it consumes (Celery's
        `worker_process_init`): the place to set up what must not cross a fork, such as an OpenTelemetry
        TracerProvider and its exporter. An exception stops the worker with the hook's error."""
        self.worker_process_init.append(fn)
        return fn

    def send(self, msg: Outgoing) -> TaskHandle:
        """Publish a prepared message and wait for the confirm (or hold it in the current batch)."""
        if tracing.spans is not None:
            with tracing.publishing(msg, self.settings.exchange):
                return self._send(msg)
        return self._send(msg)

    def _send(self, msg: Outgoing) -> TaskHandle:
        batch: SyncBatch | None = getattr(self._local, "batch", None)
        if batch is not None:
            batch.add(msg)
        else:
            self._sync_publisher().publish(msg)
        return TaskHandle(msg.message_id, msg.task_name, msg.routing_key, self)

    def _async_publisher(self) -> AsyncPublisher:
        loop = asyncio.get_running_loop()
        publisher = self._aio.get(loop)
        if publisher is None:
            publisher = self._aio[loop] = AsyncPublisher(self.settings, self.declarations())
            self._close_with_loop()
        return publisher

    def _close_with_loop(self) -> None:
        # An async generator started on the loop is closed by the loop's shutdown_asyncgens(), which
        # asyncio.run() calls before closing the loop: the app's connections of that loop close with it.
        loop = asyncio.get_running_loop()
        if loop in self._guards:
            return

        async def guard() -> AsyncIterator[None]:
            try:
                yield
            finally:
                self._guards.pop(loop, None)
                await self.aclose()

        gen = self._guards[loop] = guard()
        asyncio.ensure_future(gen.__anext__())

    async def asend(self, msg: Outgoing) -> TaskHandle:
        """Async twin of `send`: inside `abatch()` the confirm is awaited at the end of the batch."""
        if tracing.spans is not None:
            with tracing.publishing(msg, self.settings.exchange):
                return await self._asend(msg)
        return await self._asend(msg)

    async def _asend(self, msg: Outgoing) -> TaskHandle:
        batch = self._abatch.get()
        if batch is None:
            await self._async_publisher().publish(msg)
        else:
            await batch.add(msg)
        return TaskHandle(msg.message_id, msg.task_name, msg.routing_key, self)

    def rpc_call(self, msg: Outgoing, timeout_s: float) -> Any:
        """Publish a request over direct reply-to and wait for the task's return value (any thread)."""
        rpc = self._rpc
        if rpc is None:
            with _LAZY_INIT:
                rpc = self._rpc = self._rpc or SyncRpc(self.settings, self.declarations())
        with tracing.publishing(msg, self.settings.exchange):
            return rpc.call(msg, timeout_s)

    async def arpc_call(self, msg: Outgoing, timeout_s: float) -> Any:
        """Async twin of `rpc_call`: the calls of one event loop share a connection and reply consumer."""
        loop = asyncio.get_running_loop()
        rpc = self._arpc.get(loop)
        if rpc is None:
            self._close_with_loop()
            rpc = self._arpc[loop] = AsyncRpc(self.settings, self.declarations())
        with tracing.publishing(msg, self.settings.exchange):
            return await rpc.call(msg, timeout_s)

    # -- results ---------------------------------------------------------------------------------

    @property
    def backend(self) -> ResultBackend | None:
        """The result backend chosen by `result_backend`'s URL scheme, or None when results are not stored."""
        if self._backend is None and self.settings.result_backend:
            with _LAZY_INIT:
                self._backend = self._backend or load_backend(self.settings.result_backend)
        return self._backend

    def result_backend_for(self, task_name: str) -> ResultBackend:
        """The backend that holds `task_name`'s results; `ConfigError` saying why there is none."""
        backend = self.backend
        if backend is None:
            raise ConfigError(
                f"app {self.name!r} has no result backend, so task results are not stored: set "
                "result_backend='redis://host:6379/0' (or RABBITTASK_RESULT_BACKEND), or use .call() to wait "
                "for a result over direct reply-to"
            )
        task = self.tasks.get(task_name)
        if task is not None and task.ignore_result:
            raise ConfigError(f"task {task_name!r} is declared with ignore_result=True: its results are not stored")
        return backend

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Send many tasks with pipelined confirms; on exit wait for all and raise if any failed.

        Messages stream to the broker in chunks while the block runs (see `publish/batch.py`); if the
        block raises, what it sent so far is still confirmed, the rest is not sent.
        """
        if getattr(self._local, "batch", None) is not None:
            yield  # nested: the outer batch confirms
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise ConfigError("app.batch() cannot be used inside a running event loop: use `async with app.abatch()`")
        batch = self._local.batch = SyncBatch(self.settings, self._batch_declarations, self._batch_opened)
        try:
            yield
        except BaseException:
            self._local.batch = None
            with contextlib.suppress(Exception):
                batch.finish(send=False)
            raise
        self._local.batch = None
        _raise_failed(batch.finish(), batch.count)

    def _batch_declarations(self) -> Sequence[Declaration]:
        # The topology is declared once per process, not per batch.
        return () if self._declared_pid == os.getpid() else self.declarations()

    def _batch_opened(self) -> None:
        self._declared_pid = os.getpid()

    @asynccontextmanager
    async def abatch(self) -> AsyncIterator[None]:
        """Async twin of `batch()`: publishes start at once, confirms are awaited on exit."""
        if self._abatch.get() is not None:
            yield
            return
        batch = Pipeline(self._async_publisher(), self.settings.batch_in_flight)
        token = self._abatch.set(batch)
        try:
            yield
        finally:
            self._abatch.reset(token)
            await batch.wait()
        _raise_failed(batch.failed, batch.count)

    def close(self) -> None:
        """Close this thread's publisher connection, the process's RPC connection and the backend's."""
        publisher: SyncPublisher | None = getattr(self._local, "publisher", None)
        if publisher is not None:
            publisher.close()
        if self._rpc is not None:
            self._rpc.close()  # shared by all threads: a later call reopens it
        if self._backend is not None:
            self._backend.close()

    async def aclose(self) -> None:
        """Close this event loop's publisher, RPC and result-backend connections."""
        loop = asyncio.get_running_loop()
        publisher = self._aio.pop(loop, None)
        if publisher is not None:
            await publisher.close()
        rpc = self._arpc.pop(loop, None)
        if rpc is not None:
            await rpc.close()
        if self._backend is not None:
            await self._backend.aclose()


def _raise_failed(failed: list[tuple[str, BaseException]], total: int) -> None:
    if failed:
        ids = [i for i, _ in failed]
        first = failed[0][1]
        shown = ", ".join(ids[:20]) + (" ..." if len(ids) > 20 else "")
        raise BatchNotConfirmed(
            f"{len(failed)} of {total} message(s) of the batch were not confirmed (first error: {first}); ids: {shown}",
            ids,
        )
