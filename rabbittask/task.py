"""Task: a function bound to a queue, with confirmed publishing and argument validation."""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypeVar, Unpack

from pydantic import ValidationError
from pydantic.experimental.arguments_schema import generate_arguments_schema
from pydantic_core import ArgsKwargs, SchemaValidator

from rabbittask.celery.send import celery_message
from rabbittask.context import TaskContext
from rabbittask.errors import ArgumentsInvalid, ConfigError
from rabbittask.handle import TaskHandle, refuse_wait_in_task
from rabbittask.message import Outgoing, new_id
from rabbittask.retry import RetryPolicy
from rabbittask.sending import NO_OPTIONS, Args, SendOptions, build_message, check_call, checked, encode_call

if TYPE_CHECKING:
    from rabbittask.app import App

P = ParamSpec("P")
R = TypeVar("R")

__all__ = ["Args", "SendOptions", "Signature", "Task", "TaskHandle"]  # the handle and options live next door


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
    """A task declared with `@app.task`; calling it runs the function here, `.delay()` sends it."""

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
        return build_message(self.app, self.name, self.queue, encode_call(self.app, self.name, args, kw), options)

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle:
        """Send the task; return once the broker confirmed it."""
        return self.app.send(self._message(args, kwargs, NO_OPTIONS))

    def apply_async(
        self,
        args: Args = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Unpack[SendOptions],
    ) -> TaskHandle:
        """Send the task with `SendOptions` (countdown, eta, expires, ...); return once the broker confirmed it."""
        return self.app.send(self._message(args, kwargs, options))

    def call(self, *args: Any, timeout: float = 30.0, **kwargs: Any) -> R:
        """Run the task on a worker and return its result (RPC over direct reply-to).

        `timeout` (seconds) bounds the wait and raises `TimeoutError`; a remote failure raises `TaskError`
        (also an instance of the remote builtin type). Inside a running task this blocking call is refused
        (`WaitInTaskRefused`) unless the app allows it (`allow_join_in_task`).
        """
        refuse_wait_in_task(self.app, f"task {self.name!r} with .call()", "await task.acall(...)")
        result: R = self.app.rpc_call(self._message(args, kwargs, NO_OPTIONS), timeout)
        return result

    async def acall(self, *args: Any, timeout: float = 30.0, **kwargs: Any) -> R:
        """Async twin of `call`."""
        result: R = await self.app.arpc_call(self._message(args, kwargs, NO_OPTIONS), timeout)
        return result

    def s(self, *args: P.args, **kwargs: P.kwargs) -> Signature:
        """This task with these arguments, validated now, to be sent later (e.g. by `app.schedule`)."""
        self.message(args, kwargs)  # validates and JSON-encodes: a bad call fails here, not at send time
        return Signature(self, tuple(args), dict(kwargs))

    def handle(self, task_id: str) -> TaskHandle:
        """The handle of an earlier call of this task, from its id (e.g. kept in a web session)."""
        return TaskHandle(task_id, self.name, self.queue, self.app)

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle:
        """Async twin of `delay`."""
        return await self.app.asend(self._message(args, kwargs, NO_OPTIONS))

    async def aapply_async(
        self,
        args: Args = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Unpack[SendOptions],
    ) -> TaskHandle:
        """Async twin of `apply_async`."""
        return await self.app.asend(self._message(args, kwargs, options))


@dataclass(frozen=True, slots=True)
class Signature:
    """A task and the arguments to call it with (`task.s(...)`), checked when it was made."""

    task: Task[Any, Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"<Signature {self.task.name} args={self.args!r} kwargs={self.kwargs!r}>"

    def delay(self) -> TaskHandle:
        """Send the task with these arguments; return once the broker confirmed it."""
        return self.task.apply_async(self.args, self.kwargs)

    async def adelay(self) -> TaskHandle:
        """Async twin of `delay`."""
        return await self.task.aapply_async(self.args, self.kwargs)

    def apply_async(self, **options: Unpack[SendOptions]) -> TaskHandle:
        """Send the task with these arguments and `SendOptions` (countdown, eta, expires, ...)."""
        return self.task.apply_async(self.args, self.kwargs, **options)

    async def aapply_async(self, **options: Unpack[SendOptions]) -> TaskHandle:
        """Async twin of `apply_async`."""
        return await self.task.aapply_async(self.args, self.kwargs, **options)


AsyncFn = Callable[..., Awaitable[Any]]
