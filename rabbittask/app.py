"""App: the task registry, its settings and `@app.task`; what a task is sent with lives in `clients.py`.

What `@app.task` accepts is `TaskOptions` (task_options.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, TypeVar, Unpack, overload

from rabbittask import tracing
from rabbittask.celery.protocol import is_celery
from rabbittask.celery.queues import check_same_kind, queue_spec
from rabbittask.celery.send import celery_handle, close_celery_reader
from rabbittask.clients import Clients
from rabbittask.context import TaskContext
from rabbittask.control.rates import parse_rate
from rabbittask.delays import check_delay_queue_name, delay_declarations
from rabbittask.errors import ConfigError, TaskNotFound
from rabbittask.explain import unknown_task_hint
from rabbittask.message import Outgoing
from rabbittask.partitions import partition_declarations, task_key_reader
from rabbittask.results.backend import ResultBackend
from rabbittask.retry import policy_for
from rabbittask.sending import TASK_NAME, Args, SendOptions, message_by_name
from rabbittask.settings import Settings
from rabbittask.task import Signature, Task, TaskHandle, default_task_name
from rabbittask.task_options import TaskOptions
from rabbittask.topology import (
    Declaration,
    ExchangeDecl,
    QueueDecl,
    QueueSpec,
    declarations,
    events_exchange_name,
    service_declarations,
)
from rabbittask.workflow.wire import join_queue_arguments, join_queue_name

if TYPE_CHECKING:
    from rabbittask.beat.entry import CatchUp, ScheduleEntry
    from rabbittask.control.client import Control
    from rabbittask.results.rpc import OnProgress
    from rabbittask.testing.eager import Eager

P = ParamSpec("P")
R = TypeVar("R")


class App:
    """A rabbittask application: tasks, the queues they map to, and how to reach the broker."""

    task_class: type[Task[Any, Any]] = Task  # what @app.task makes (`DjangoApp`: a subclass)

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
        self.settings = Settings.read(settings, f"app {name!r}")
        self.name = name
        self.autoretry_for = tuple(autoretry_for)
        policy_for(self.settings, self.autoretry_for, {})  # refuses a bad app-wide retry setting now
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.queues: dict[str, QueueSpec] = {}
        self.schedules: dict[str, ScheduleEntry] = {}
        # The chord join queue is declared by workers and by a producer's first chord (workflow/canvas.py).
        self.clients = Clients(self.settings, lambda: self.declarations(join=False))
        self.worker_process_init: list[Callable[[], None]] = []
        if self.settings.otel:
            tracing.enable()
        if self.settings.eager:
            self.eager().start()  # for the app's whole life

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

        The options are the fields of `TaskOptions`. `bind=True` passes a `TaskContext` (id, attempt,
        headers, `.retry()`) as the first argument.
        """

        def decorate(f: Callable[P, R]) -> Task[P, R]:
            name = options.get("name")
            return self._register(f, TaskOptions.read(options, name if isinstance(name, str) else default_task_name(f)))

        return decorate(fn) if fn is not None else decorate

    def _register(self, fn: Callable[P, R], options: TaskOptions) -> Task[P, R]:
        name = options.name or default_task_name(fn)
        if not TASK_NAME.match(name):
            raise ConfigError(
                f"task name {name!r} is not allowed: use letters, digits and _ . : - (max 200); give the task a "
                "name=... (a lambda or a function declared in a script read from stdin has none of its own)"
            )
        if name in self.tasks:
            raise ConfigError(f"task name {name!r} is declared twice: give one of them name=...")
        o = options
        celery = self.settings.accept_celery if o.accept_celery is None else o.accept_celery
        spec = queue_spec(name, o, self.settings, celery=celery)
        queue_options = (o.queue_type, o.max_priority, o.delivery_limit, o.max_length, o.overflow, o.message_ttl_ms)
        known = self.queues.get(spec.name)
        check_same_kind(name, known, spec)
        key = task_key_reader(fn, name, o.partition_by, o.fair_by, spec, known, o.single_active_consumer, o.bind)
        if (
            known is not None
            and known != spec
            and (o.single_active_consumer or spec.partitions or any(v is not None for v in queue_options))
        ):
            raise ConfigError(
                f"queue {spec.name!r} is declared with different options by two tasks: {known} and {spec}"
            )
        check_delay_queue_name(spec.name)
        retry = policy_for(self.settings, self.autoretry_for, o.retry_options())
        self.queues.setdefault(spec.name, spec)
        task: Task[P, R] = self.task_class(self, fn, name, spec.name, retry=retry, bind=o.bind)
        task.ignore_result = o.ignore_result
        task.dedupe_s = o.dedupe_s
        task.partition_key, task.retries_in_place = key, o.partition_by is not None and o.partition_retry == "wait"
        task.mask_args = frozenset(o.mask_args)
        task.unique_for, task.unique_key = o.unique_for, o.unique_key
        task.rate_limit = parse_rate(o.rate_limit, o.rate_limit_burst) if o.rate_limit is not None else None
        task.celery = celery
        task.set_time_limits(o.time_limit, o.soft_time_limit)
        self.tasks[name] = task
        return task

    def schedule(
        self,
        name: str,
        target: Signature[Any] | Task[Any, Any],
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
        """Send `target` periodically, by `rabbittask beat`: `app.schedule("n", report.s(), cron="0 3 * * *")`.

        `cron` (5 fields, in time zone `tz`) or `every` (a timedelta or seconds, counted from the Unix
        epoch). `expires`: a tick no worker started this long after it was sent is dropped. `catch_up`:
        ticks missed (over `grace_s` late) while no scheduler ran: `skip`, `once`, `all` (`catch_up_limit`).
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
            raise TaskNotFound(
                f"task {name!r} is not registered in app {self.name!r}{unknown_task_hint(name, self.tasks)}"
            ) from None

    def declarations(self, queues: list[str] | None = None, *, join: bool = True) -> list[Declaration]:
        """What the broker must have for this app (or for some of its queues); `join`: with the chord join queue."""
        specs = [self.queues[q] for q in queues] if queues else list(self.queues.values())
        exchange = self.settings.exchange
        decls = declarations(exchange, specs) + delay_declarations(
            exchange, [s.name for s in specs if not s.partitions], self.settings.delay_queue_type
        )
        decls += partition_declarations(exchange, [s for s in specs if s.partitions])
        if not queues and self.settings.events:  # workers publish task events and heartbeats there
            decls.append(ExchangeDecl(events_exchange_name(exchange), "topic"))
        if not queues:  # the history stream and the control plane's objects, as workers declare them
            s = self.settings
            history = (s.history_max_age_s, s.history_max_bytes) if s.events and s.history else None
            decls += service_declarations(
                exchange, history=history, control_retention_s=s.revoke_retention_s if s.control else None
            )
        if not queues and join:  # chord members report there; a worker's joiner counts them (workflow/wire.py)
            decls.append(QueueDecl(join_queue_name(exchange, self.settings.join_queue), join_queue_arguments()))
        if self.schedules and not queues:
            from rabbittask.beat.state import state_declaration

            decls.append(state_declaration(exchange, self.name))
        return decls

    def declare(self) -> None:
        """Declare the app's whole topology on the broker now (it is also declared on first use)."""
        self.clients.declare()

    def on_worker_process_init(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Decorator: call `fn()` in each worker child after the fork, before it consumes (Celery's
        `worker_process_init`): the place to set up what must not cross a fork, such as an OpenTelemetry
        TracerProvider and its exporter. An exception stops the worker with the hook's error."""
        self.worker_process_init.append(fn)
        return fn

    # -- sending ---------------------------------------------------------------------------------

    def send_task(
        self, name: str, args: Args = (), kwargs: Mapping[str, Any] | None = None, **options: Unpack[SendOptions]
    ) -> TaskHandle[Any]:
        """Send a task by its name, from a producer that does not import its code; confirmed like `.delay()`.

        `app.send_task("shop.tasks.send_email", args=["ada@example.com", "hi"], queue="emails")`. The
        send options are those of `apply_async`. Without `queue`, the message goes to the app's
        `default_queue`. A task this app declares is sent as `apply_async` sends it (arguments validated,
        its own queue); for other names the worker checks the arguments and dead-letters a bad call.
        """
        return self.send(message_by_name(self, name, args, kwargs, options))

    async def asend_task(
        self, name: str, args: Args = (), kwargs: Mapping[str, Any] | None = None, **options: Unpack[SendOptions]
    ) -> TaskHandle[Any]:
        """Async twin of `send_task`."""
        return await self.asend(message_by_name(self, name, args, kwargs, options))

    def send(self, msg: Outgoing) -> TaskHandle[Any]:
        """Publish a prepared message and wait for the confirm (or hold it in the current batch)."""
        if tracing.spans is not None:
            with tracing.publishing(msg, self.settings.exchange):
                self.clients.send(msg)
        else:
            self.clients.send(msg)
        return self._handle(msg)

    async def asend(self, msg: Outgoing) -> TaskHandle[Any]:
        """Async twin of `send`: inside `abatch()` the confirm is awaited at the end of the batch."""
        if tracing.spans is not None:
            with tracing.publishing(msg, self.settings.exchange):
                await self.clients.asend(msg)
        else:
            await self.clients.asend(msg)
        return self._handle(msg)

    def _handle(self, msg: Outgoing) -> TaskHandle[Any]:
        if is_celery(msg.headers):  # its result is Celery's record
            return celery_handle(self, msg)
        return TaskHandle(msg.message_id, msg.task_name, msg.routing_key, self)

    def rpc_call(self, msg: Outgoing, timeout_s: float, on_progress: OnProgress | None = None) -> Any:
        """Publish a request over direct reply-to and wait for the task's return value (any thread)."""
        with tracing.publishing(msg, self.settings.exchange):
            return self.clients.call(msg, timeout_s, on_progress)

    async def arpc_call(self, msg: Outgoing, timeout_s: float, on_progress: OnProgress | None = None) -> Any:
        """Async twin of `rpc_call`: the calls of one event loop share a connection and reply consumer."""
        with tracing.publishing(msg, self.settings.exchange):
            return await self.clients.acall(msg, timeout_s, on_progress)

    def eager(self) -> Eager:
        """For tests: `with app.eager() as eager:` runs each task this app sends at once, in this process,
        through the worker's own stages; `handle.get()` returns or raises as for a worker (docs/testing.md)."""
        from rabbittask.testing.eager import Eager  # loaded by tests only

        return Eager(self)

    def batch(self) -> AbstractContextManager[None]:
        """Send many tasks with pipelined confirms; on exit wait for all and raise if any failed.

        Messages stream to the broker in chunks while the block runs (see `publish/batch.py`); if the
        block raises, what it sent so far is still confirmed, the rest is not sent.
        """
        return self.clients.batch()

    def abatch(self) -> AbstractAsyncContextManager[None]:
        """Async twin of `batch()`: publishes start at once, confirms are awaited on exit."""
        return self.clients.abatch()

    # -- results ---------------------------------------------------------------------------------

    @property
    def backend(self) -> ResultBackend | None:
        """The result backend chosen by `result_backend`'s URL scheme, or None when results are not stored."""
        return self.clients.backend

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

    @property
    def control(self) -> Control:
        """The control plane: `app.control.ping()`, `.inspect().active()`, `.revoke(id)`, `.rate_limit(...)`."""
        from rabbittask.control.client import Control  # lazily: a worker child never needs the client side

        return Control(self)

    def close(self) -> None:
        """Close this thread's publisher connection, the process's RPC connection and the backend's."""
        self.clients.close()
        close_celery_reader(self)

    async def aclose(self) -> None:
        """Close this event loop's publisher, RPC and result-backend connections."""
        await self.clients.aclose()
