"""Task: a function bound to a queue, with confirmed publishing and argument validation."""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypedDict, TypeVar, Unpack

from pydantic import ValidationError
from pydantic.experimental.arguments_schema import generate_arguments_schema
from pydantic_core import ArgsKwargs, SchemaValidator

from rabbittask import tracing
from rabbittask.context import TaskContext
from rabbittask.errors import ArgumentsInvalid, ConfigError, PayloadError
from rabbittask.message import Outgoing, encode_body, new_id
from rabbittask.results.record import PENDING, Status, decode_result, status_of
from rabbittask.retry import RetryPolicy, due_in_ms, schedule_headers
from rabbittask.signing import sign

if TYPE_CHECKING:
    from rabbittask.app import App
    from rabbittask.results.backend import ResultBackend

P = ParamSpec("P")
R = TypeVar("R")
Args = tuple[Any, ...] | list[Any]  # positional arguments of a task call


class SendOptions(TypedDict, total=False):
    """How one call is sent: the keywords of `apply_async`, `aapply_async`, `message` and `Signature.apply_async`.

    `countdown` (seconds) or `eta` (a datetime; naive means local time) delay it on the broker's
    delay ladder; `expires` (seconds from now, or a datetime) makes a worker drop it unrun, into the
    dead-letter queue with reason "expired", once that time has passed.
    """

    queue: str | None  # another of the app's queues than the task's own
    priority: int | None  # on a classic queue declared with max_priority
    headers: Mapping[str, Any] | None  # added to the message's headers (e.g. a traceparent)
    message_id: str | None  # the task id; default a new UUID (sending again with the same id is recognisable)
    countdown: float | None
    eta: datetime | None
    expires: float | datetime | None


SEND_OPTIONS = SendOptions.__optional_keys__
_NO_OPTIONS = SendOptions()  # never changed: .delay() and .call() send with none


@dataclass(frozen=True, slots=True)
class TaskHandle:
    """What `.delay()` returns: the id of the confirmed task message and where it went.

    With a result backend (`result_backend=` on the app), it also reads the task's result:
    `get()`/`aget()` wait for it, `status` says PENDING, SUCCESS or FAILURE, `forget()` deletes it.
    """

    id: str
    task_name: str
    queue: str
    app: App | None = field(default=None, repr=False, compare=False)

    def _backend(self) -> ResultBackend:
        if self.app is None:
            raise ConfigError(f"handle of task {self.task_name!r} (id {self.id}) has no app to read results from")
        return self.app.result_backend_for(self.task_name)

    def _timeout(self, timeout: float | None) -> TimeoutError:
        within = "" if timeout is None else f" within {timeout:g} s"
        return TimeoutError(f"no result for task {self.task_name!r} (id {self.id}){within}")

    def get(self, timeout: float | None = None) -> Any:
        """Wait for the result (at most `timeout` seconds; None: no limit) and return it.

        A failed task raises `TaskError` with the remote type, message and traceback; no result in
        time raises `TimeoutError`.
        """
        data = self._backend().wait(self.id, timeout)
        if data is None:
            raise self._timeout(timeout)
        return decode_result(data)

    async def aget(self, timeout: float | None = None) -> Any:
        """Async twin of `get`."""
        data = await self._backend().await_(self.id, timeout)
        if data is None:
            raise self._timeout(timeout)
        return decode_result(data)

    @property
    def status(self) -> Status:
        """PENDING (no result stored yet, or expired), SUCCESS or FAILURE."""
        data = self._backend().fetch(self.id)
        return PENDING if data is None else status_of(data)

    async def astatus(self) -> Status:
        """Async twin of `status`."""
        data = await self._backend().afetch(self.id)
        return PENDING if data is None else status_of(data)

    def forget(self) -> None:
        """Delete the stored result now, before it expires."""
        self._backend().forget(self.id)

    async def aforget(self) -> None:
        """Async twin of `forget`."""
        await self._backend().aforget(self.id)


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
        args, kw = self.validate(args, kwargs or {})
        body = encode_body(args, kw)
        if len(body) > self.app.settings.max_payload_bytes:
            raise PayloadError(
                f"task {self.name!r}: the message body is {len(body)} bytes, above max_payload_bytes "
                f"({self.app.settings.max_payload_bytes}); pass a reference (a URL, a key) instead of the data"
            )
        msg = self._with_options(body, options) if options else Outgoing(self.queue, body, new_id(), self.name)
        if self.app.settings.signing_key_id is not None:
            sign(self.app.settings, msg)
        tracing.inject(msg)  # not signed: a worker forwards trace headers of the task it runs
        return msg

    def _with_options(self, body: bytes, options: SendOptions) -> Outgoing:
        if not SEND_OPTIONS.issuperset(options):  # what Python says of an unexpected keyword, with the known ones
            unknown = options.keys() - SEND_OPTIONS
            raise TypeError(
                f"task {self.name!r} got unknown send option(s) {', '.join(sorted(unknown))}; "
                f"the send options are {', '.join(sorted(SEND_OPTIONS))}"
            )
        headers = options.get("headers")
        msg = Outgoing(
            routing_key=options.get("queue") or self.queue,
            body=body,
            message_id=options.get("message_id") or new_id(),
            task_name=self.name,
            priority=options.get("priority"),
            headers=dict(headers) if headers else None,
        )
        countdown, eta, expires = options.get("countdown"), options.get("eta"), options.get("expires")
        if countdown is not None or eta is not None or expires is not None:
            self._schedule(msg, countdown, eta, expires)
        return msg

    def _schedule(
        self, msg: Outgoing, countdown: float | None, eta: datetime | None, expires: float | datetime | None
    ) -> None:
        now = time.time()
        delay_ms = due_in_ms(countdown, eta, now)
        if delay_ms > 0 and msg.routing_key not in self.app.queues:
            # Only the app's queues are bound to the ladder's due exchange; a delayed message for
            # any other queue would wait its delay and then find no way out.
            raise ConfigError(
                f"task {self.name!r}: queue {msg.routing_key!r} is not one of the app's queues, so it cannot "
                "receive delayed messages; declare a task on it or send without countdown/eta"
            )
        extra = schedule_headers(delay_ms, expires, now)
        if extra:
            msg.headers = {**(msg.headers or {}), **extra}
        msg.delay_ms = math.ceil(delay_ms)

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle:
        """Send the task; return once the broker confirmed it."""
        return self.app.send(self._message(args, kwargs, _NO_OPTIONS))

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

        `timeout` (seconds) bounds the wait and raises `TimeoutError`; a remote failure raises `TaskError`.
        """
        result: R = self.app.rpc_call(self._message(args, kwargs, _NO_OPTIONS), timeout)
        return result

    async def acall(self, *args: Any, timeout: float = 30.0, **kwargs: Any) -> R:
        """Async twin of `call`."""
        result: R = await self.app.arpc_call(self._message(args, kwargs, _NO_OPTIONS), timeout)
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
        return await self.app.asend(self._message(args, kwargs, _NO_OPTIONS))

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
