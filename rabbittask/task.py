"""Task: a function bound to a queue, with confirmed publishing and argument validation."""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypeVar, Unpack, overload

from pydantic import ValidationError
from pydantic.experimental.arguments_schema import generate_arguments_schema
from pydantic_core import ArgsKwargs, SchemaValidator

from rabbittask.celery.send import celery_message
from rabbittask.context import TaskContext
from rabbittask.errors import ArgumentsInvalid, ConfigError
from rabbittask.handle import TaskHandle, refuse_wait_in_task
from rabbittask.history.argsrepr import H_ARGSREPR, args_repr
from rabbittask.message import H_PARTITION_KEY, Outgoing, new_id
from rabbittask.retry import RetryPolicy
from rabbittask.sending import NO_OPTIONS, Args, SendOptions, build_message, check_call, checked, encode_call
from rabbittask.unique import UniqueKey, key_of
from rabbittask.workflow.signature import Signature, StepOptions

if TYPE_CHECKING:
    from rabbittask.app import App
    from rabbittask.control.rates import Rate
    from rabbittask.partitions import KeyReader
    from rabbittask.results.rpc import OnProgress

P = ParamSpec("P")
R = TypeVar("R", covariant=True)  # what the function returns: for an `async def` task, a coroutine
T = TypeVar("T")
Co = Coroutine[Any, Any, T]  # an `async def` task's R: its handle, signature and call carry the awaited T
DEFAULT_CALL_TIMEOUT_S = 30.0

__all__ = [
    "Args",
    "SendOptions",
    "Signature",
    "StepOptions",
    "Task",
    "TaskHandle",
]  # the handle and options live next door


def _skip_context(index: int, name: str, annotation: Any) -> Literal["skip"] | None:
    return "skip" if index == 0 else None


def _validator(fn: Callable[..., Any], name: str, bind: bool = False) -> SchemaValidator:
    try:
        # bind=True: the first parameter is the TaskContext the worker passes, not a task argument.
        return SchemaValidator(generate_arguments_schema(fn, parameters_callback=_skip_context if bind else None))
    except Exception as e:  # pydantic raises several types for unsupported annotations
        raise ConfigError(f"task {name!r}: its signature cannot be validated: {e}") from e


def describe_validation_error(task_name: str, error: ValidationError, params: list[str]) -> str:
    """One readable line per invalid argument, naming the task and the field."""
    parts = []
    for err in error.errors(include_url=False):
        loc = [params[p] if isinstance(p, int) and p < len(params) and i == 0 else p for i, p in enumerate(err["loc"])]
        field = ".".join(str(p) for p in loc) or "(arguments)"
        parts.append(
            f"{field}: {err['msg']} (got {err['input']!r})"
            if err["type"] != "missing_argument"
            else f"{field}: {err['msg']}"
        )
    return f"invalid arguments for task {task_name!r}: " + "; ".join(parts)


def default_task_name(fn: Callable[..., Any]) -> str:
    """`module.function` (nested functions drop the `<locals>` part).

    A module run as a script (`python tasks.py`) is `__main__` to itself but `tasks` to a worker that
    imports it: the name uses the module's own name, so sender and worker agree.
    """
    module = fn.__module__
    if module == "__main__":
        main = sys.modules["__main__"]
        spec = getattr(main, "__spec__", None)
        module = spec.name if spec is not None else os.path.splitext(os.path.basename(getattr(main, "__file__", "")))[0]
        module = module if module.isidentifier() else "__main__"  # stdin, a notebook: no name a worker can import
    return f"{module}.{fn.__qualname__.replace('<locals>.', '')}"


class Task(Generic[P, R]):
    """A task declared with `@app.task`; calling it runs the function here, `.delay()` sends it.

    `Task[P, R]` keeps the function's parameters `P` and return type `R`, so a type checker checks
    the arguments of `.delay()`, `.adelay()`, `.s()` and `.call()`, and knows what `.call()`,
    `.acall()` and the handle's `.get()` return (for an `async def` task, what it awaits to).
    """

    time_limit: float | None = None
    """Hard limit in seconds: the task is stopped and its message dead-lettered with reason "time limit"."""
    soft_time_limit: float | None = None
    """Soft limit in seconds: `SoftTimeLimitExceeded` is raised inside the task (async tasks are cancelled)."""

    def __init__(
        self,
        app: App,
        fn: Callable[P, R],
        name: str,
        queue: str,
        *,
        retry: RetryPolicy | None = None,
        bind: bool = False,
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.queue = queue
        self.is_async = inspect.iscoroutinefunction(fn)
        self.retry_policy = retry or RetryPolicy()
        self.ignore_result = False  # set by @app.task(ignore_result=True): no result is stored
        self.dedupe_s: float | None = None  # set by @app.task(dedupe_s=...): see worker/dedupe.py
        # Set by @app.task(partition_by=... or fair_by=...): reads the `rt-partition-key` of a call (partitions.py).
        self.partition_key: KeyReader | None = None
        self.retries_in_place = False  # partition_by with partition_retry="wait": see worker/inplace.py
        self.unique_for: float | None = None  # set by @app.task(unique_for=...): see unique.py
        self.unique_key: UniqueKey | None = None
        self.mask_args: frozenset[str] = frozenset()  # set by @app.task(mask_args=...): hidden in the history
        self.rate_limit: Rate | None = None  # set by @app.task(rate_limit=...): see worker/rates.py
        self.celery = False  # set by accept_celery: the queue is Celery's, sends are Celery messages
        self.bind = bind
        self._validator = _validator(fn, name, bind)
        self._params = list(inspect.signature(fn).parameters)[1 if bind else 0 :]
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.queue}>"

    def set_time_limits(self, time_limit: float | None, soft_time_limit: float | None) -> None:
        """Set the hard and soft time limits (seconds; None for none); the soft one must come first."""
        for label, value in (("time_limit", time_limit), ("soft_time_limit", soft_time_limit)):
            if value is not None and not value > 0:
                raise ConfigError(f"task {self.name!r}: {label} must be a positive number of seconds, got {value!r}")
        if time_limit is not None and soft_time_limit is not None and soft_time_limit >= time_limit:
            raise ConfigError(
                f"task {self.name!r}: soft_time_limit ({soft_time_limit:g} s) must be shorter than "
                f"time_limit ({time_limit:g} s), or the soft limit never fires"
            )
        self.time_limit = time_limit
        self.soft_time_limit = soft_time_limit

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if self.bind:  # called in-process: a context of a first run that was never sent
            ctx = TaskContext(new_id(), self.name, self.queue)
            return self.fn(ctx, *args, **kwargs)  # type: ignore[arg-type]
        return self.fn(*args, **kwargs)

    def validate(self, args: Args, kwargs: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Check and coerce arguments against the signature; raise `ArgumentsInvalid` naming the field."""
        try:
            validated: tuple[tuple[Any, ...], dict[str, Any]] = self._validator.validate_python(
                ArgsKwargs(tuple(args), dict(kwargs))
            )
        except ValidationError as e:
            raise ArgumentsInvalid(describe_validation_error(self.name, e, self._params)) from None
        return validated

    def message(
        self,
        args: Args = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Unpack[SendOptions],
    ) -> Outgoing:
        """Validate the call and build the message that `.apply_async` would publish."""
        return self._message(args, kwargs, options)

    def _message(self, args: Args, kwargs: Mapping[str, Any] | None, options: SendOptions) -> Outgoing:
        if type(args) is not tuple or (kwargs is not None and type(kwargs) is not dict):  # .delay(): never
            args, kwargs = check_call(self.name, args, kwargs)
        args, kw = self.validate(args, kwargs or {})
        celery = options.get("celery")
        if self.celery if celery is None else celery:  # a Celery protocol 2 message (celery/send.py)
            return celery_message(self.app, self.name, self.queue, args, kw, checked(self.name, options))
        if self.partition_key is not None:  # the consistent-hash exchange routes on this header
            headers = {**(options.get("headers") or {}), H_PARTITION_KEY: self.partition_key(args, kw)}
            options = {**options, "headers": headers}
        msg = build_message(self.app, self.name, self.queue, encode_call(self.app, self.name, args, kw), options)
        if self.app.settings.history:  # what the history shows and searches; masked here, before it leaves
            msg.headers = {**(msg.headers or {}), H_ARGSREPR: args_repr(args, kw, self._params, self.mask_args)}
        return msg

    # Each method that returns a handle or a signature has two overloads: for an `async def` task
    # (R is a coroutine) it carries what the coroutine returns, for a plain function R itself.
    @overload
    def delay(self: Task[P, Co[T]], *args: P.args, **kwargs: P.kwargs) -> TaskHandle[T]: ...
    @overload
    def delay(self: Task[P, T], *args: P.args, **kwargs: P.kwargs) -> TaskHandle[T]: ...

    def delay(self, *args: Any, **kwargs: Any) -> TaskHandle[Any]:
        """Send the task; return once the broker confirmed it."""
        msg = self._message(args, kwargs, NO_OPTIONS)
        if self.unique_for is not None and not self._claim(args, kwargs):
            return self._duplicate(msg)
        return self.app.send(msg)

    @overload
    def apply_async(
        self: Task[..., Co[T]], args: Args = (), kwargs: Mapping[str, Any] | None = None, **o: Unpack[SendOptions]
    ) -> TaskHandle[T]: ...
    @overload
    def apply_async(
        self: Task[..., T], args: Args = (), kwargs: Mapping[str, Any] | None = None, **o: Unpack[SendOptions]
    ) -> TaskHandle[T]: ...

    def apply_async(
        self,
        args: Args = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Unpack[SendOptions],
    ) -> TaskHandle[Any]:
        """Send the task with `SendOptions` (countdown, eta, expires, ...); return once the broker confirmed it."""
        msg = self._message(args, kwargs, options)
        if self.unique_for is not None and not self._claim(args, kwargs or {}):
            return self._duplicate(msg)
        return self.app.send(msg)

    def _claim(self, args: Args, kwargs: Mapping[str, Any]) -> bool:
        """Whether this call holds its unique key (send it), or another holds it within the window."""
        assert self.unique_for is not None
        if self.app.clients.local is not None:
            return True  # eager and stub runs: nothing to share a key with
        key = key_of(self.name, args, kwargs, self.unique_key)
        return self.app.clients.unique_claims().claim(self.name, key, self.unique_for)

    def _duplicate(self, msg: Outgoing) -> TaskHandle[Any]:
        return TaskHandle(msg.message_id, self.name, self.queue, self.app, duplicate=True)

    # `timeout=` and `on_progress=` cannot sit between `*args: P.args` and `**kwargs: P.kwargs` (PEP 612):
    # a call without them is checked against the task's parameters; one with them checks the return type.
    @overload
    def call(self: Task[P, Co[T]], *args: P.args, **kwargs: P.kwargs) -> T: ...
    @overload
    def call(self: Task[P, T], *args: P.args, **kwargs: P.kwargs) -> T: ...
    @overload
    def call(
        self: Task[..., Co[T]], *args: Any, timeout: float, on_progress: OnProgress | None = None, **kwargs: Any
    ) -> T: ...
    @overload
    def call(
        self: Task[..., T], *args: Any, timeout: float, on_progress: OnProgress | None = None, **kwargs: Any
    ) -> T: ...
    @overload
    def call(self: Task[..., Co[T]], *args: Any, on_progress: OnProgress, **kwargs: Any) -> T: ...
    @overload
    def call(self: Task[..., T], *args: Any, on_progress: OnProgress, **kwargs: Any) -> T: ...

    def call(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task on a worker and return its result (RPC over direct reply-to).

        `timeout=` (seconds, default 30) bounds the wait and raises `TimeoutError`; a remote failure raises
        `TaskError` (also an instance of the remote builtin type). Inside a running task this blocking call
        is refused (`WaitInTaskRefused`) unless the app allows it (`allow_join_in_task`). `on_progress=` is
        called, in this thread, with each `Progress` the task reports (`ctx.progress()`, at most one a
        second) while the call waits.
        """
        timeout = kwargs.pop("timeout", DEFAULT_CALL_TIMEOUT_S)
        refuse_wait_in_task(self.app, f"task {self.name!r} with .call()", "await task.acall(...)")
        on_progress = kwargs.pop("on_progress", None)
        return self.app.rpc_call(self._message(args, kwargs, NO_OPTIONS), timeout, on_progress)

    @overload
    async def acall(self: Task[P, Co[T]], *args: P.args, **kwargs: P.kwargs) -> T: ...
    @overload
    async def acall(self: Task[P, T], *args: P.args, **kwargs: P.kwargs) -> T: ...
    @overload
    async def acall(
        self: Task[..., Co[T]], *args: Any, timeout: float, on_progress: OnProgress | None = None, **kwargs: Any
    ) -> T: ...
    @overload
    async def acall(
        self: Task[..., T], *args: Any, timeout: float, on_progress: OnProgress | None = None, **kwargs: Any
    ) -> T: ...
    @overload
    async def acall(self: Task[..., Co[T]], *args: Any, on_progress: OnProgress, **kwargs: Any) -> T: ...
    @overload
    async def acall(self: Task[..., T], *args: Any, on_progress: OnProgress, **kwargs: Any) -> T: ...

    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        """Async twin of `call`."""
        timeout = kwargs.pop("timeout", DEFAULT_CALL_TIMEOUT_S)
        on_progress = kwargs.pop("on_progress", None)
        return await self.app.arpc_call(self._message(args, kwargs, NO_OPTIONS), timeout, on_progress)

    # `.s()` is partial (a chain passes the previous result first), so only its return type is typed;
    # `.si()` takes the whole call and is checked against the task's parameters.
    @overload
    def s(self: Task[..., Co[T]], *args: Any, **kwargs: Any) -> Signature[T]: ...
    @overload
    def s(self: Task[..., T], *args: Any, **kwargs: Any) -> Signature[T]: ...

    def s(self, *args: Any, **kwargs: Any) -> Signature[Any]:
        """This task with these arguments, to be sent later: in a workflow, by `app.schedule`, or `.delay()`.

        A partial call is allowed: in a chain, the previous step's result becomes the first argument.
        What is given is checked now (types, unknown names, JSON); missing arguments are checked when sent.
        """
        self._check_partial(tuple(args), dict(kwargs))
        return Signature(self, tuple(args), dict(kwargs))

    @overload
    def si(self: Task[P, Co[T]], *args: P.args, **kwargs: P.kwargs) -> Signature[T]: ...
    @overload
    def si(self: Task[P, T], *args: P.args, **kwargs: P.kwargs) -> Signature[T]: ...

    def si(self, *args: Any, **kwargs: Any) -> Signature[Any]:
        """An immutable signature: in a chain or chord it ignores the previous result; checked in full now."""
        self.message(args, kwargs)  # validates and JSON-encodes: a bad call fails here, not at send time
        return Signature(self, tuple(args), dict(kwargs), immutable=True)

    def _check_partial(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Refuse arguments that cannot fit, allowing missing ones and a first argument still to come."""
        try:
            self.message(args, kwargs)
            return
        except ArgumentsInvalid as complete_error:
            try:
                self._validator.validate_python(ArgsKwargs((_PREVIOUS, *args), kwargs))
                return
            except ValidationError as e:
                wrong = [
                    err
                    for err in e.errors(include_url=False)
                    if err["type"] != "missing_argument" and tuple(err["loc"][:1]) != (0,)
                ]
                if wrong:
                    raise complete_error from None

    @overload
    def handle(self: Task[..., Co[T]], task_id: str) -> TaskHandle[T]: ...
    @overload
    def handle(self: Task[..., T], task_id: str) -> TaskHandle[T]: ...

    def handle(self, task_id: str) -> TaskHandle[Any]:
        """The handle of an earlier call of this task, from its id (e.g. kept in a web session)."""
        return TaskHandle(task_id, self.name, self.queue, self.app)

    @overload
    async def adelay(self: Task[P, Co[T]], *args: P.args, **kwargs: P.kwargs) -> TaskHandle[T]: ...
    @overload
    async def adelay(self: Task[P, T], *args: P.args, **kwargs: P.kwargs) -> TaskHandle[T]: ...

    async def adelay(self, *args: Any, **kwargs: Any) -> TaskHandle[Any]:
        """Async twin of `delay`."""
        msg = self._message(args, kwargs, NO_OPTIONS)
        if self.unique_for is not None and not await asyncio.to_thread(self._claim, args, kwargs):
            return self._duplicate(msg)
        return await self.app.asend(msg)

    @overload
    async def aapply_async(
        self: Task[..., Co[T]], args: Args = (), kwargs: Mapping[str, Any] | None = None, **o: Unpack[SendOptions]
    ) -> TaskHandle[T]: ...
    @overload
    async def aapply_async(
        self: Task[..., T], args: Args = (), kwargs: Mapping[str, Any] | None = None, **o: Unpack[SendOptions]
    ) -> TaskHandle[T]: ...

    async def aapply_async(
        self,
        args: Args = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Unpack[SendOptions],
    ) -> TaskHandle[Any]:
        """Async twin of `apply_async`."""
        msg = self._message(args, kwargs, options)
        if self.unique_for is not None and not await asyncio.to_thread(self._claim, args, kwargs or {}):
            return self._duplicate(msg)
        return await self.app.asend(msg)


_PREVIOUS = object()  # stands for the previous step's result when a partial signature is checked


AsyncFn = Callable[..., Awaitable[Any]]
