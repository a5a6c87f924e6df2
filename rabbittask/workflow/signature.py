"""`Signature` (`task.s(...)`, `task.si(...)`, `.set(...)`) and `Chain`, the steps of a workflow.

A signature is a task with arguments, to be sent later. In a chain, each step gets the previous
step's result as its first argument unless it is immutable (`task.si`); `sig.set(...)` chooses its
queue, countdown, priority and expiry. `a.s() | b.s()` is `chain(a.s(), b.s())`. A chain sends its
first step; the others travel in that message's body and are sent by the worker (worker/followup.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar, Unpack

from typing_extensions import TypedDict

from rabbittask.errors import ConfigError
from rabbittask.handle import TaskHandle
from rabbittask.message import Outgoing, new_id
from rabbittask.sending import SendOptions, build_message
from rabbittask.workflow import wire
from rabbittask.workflow.handles import WorkflowHandle

if TYPE_CHECKING:
    from rabbittask.app import App
    from rabbittask.task import Task

R = TypeVar("R")
T = TypeVar("T")
B = TypeVar("B")

STEP_OPTIONS = frozenset({"queue", "countdown", "priority", "expires"})  # what `Signature.set` takes


class StepOptions(TypedDict, total=False):
    """What `Signature.set` takes: where and when this step is sent (as `apply_async` reads them)."""

    queue: str
    countdown: float
    priority: int
    expires: float


@dataclass(frozen=True, slots=True)
class Signature(Generic[R]):
    """A task and the arguments to call it with (`task.s(...)`), a step of a workflow (`sig | other`)."""

    task: Task[Any, R]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    immutable: bool = False  # `task.si(...)`: the previous step's result is not passed
    options: dict[str, Any] = field(default_factory=dict)  # `set(...)`: queue, countdown, priority, expires

    def __repr__(self) -> str:
        mark = "si" if self.immutable else "s"
        return f"<Signature {self.task.name}.{mark} args={self.args!r} kwargs={self.kwargs!r}>"

    def set(self, **options: Unpack[StepOptions]) -> Signature[R]:
        """This signature sent with other options: `queue=`, `countdown=` (s), `priority=`, `expires=` (s)."""
        unknown = options.keys() - STEP_OPTIONS
        if unknown:
            raise TypeError(
                f"signature of task {self.task.name!r}: {', '.join(sorted(unknown))} cannot be set; "
                f"the options are {', '.join(sorted(STEP_OPTIONS))}"
            )
        merged = {**self.options, **options}
        checked: SendOptions = {k: v for k, v in merged.items()}  # type: ignore[assignment]
        build_message(self.task.app, self.task.name, self.task.queue, b"", checked)  # options checked now
        return Signature(self.task, self.args, self.kwargs, self.immutable, merged)

    def __or__(self, other: Signature[T] | Chain[T]) -> Chain[T]:
        """`a.s() | b.s()`: a chain of the two (see `rabbittask.chain`); a chain on the right is flattened."""
        return Chain([self, *(other.steps if isinstance(other, Chain) else [other])])

    def delay(self) -> TaskHandle[R]:
        """Send the task with these arguments (and `set` options); return once the broker confirmed it."""
        return self.task.apply_async(self.args, self.kwargs, **self.options)

    async def adelay(self) -> TaskHandle[R]:
        """Async twin of `delay`."""
        return await self.task.aapply_async(self.args, self.kwargs, **self.options)

    def apply_async(self, **options: Unpack[SendOptions]) -> TaskHandle[R]:
        """Send the task with these arguments and `SendOptions` (countdown, eta, expires, ...)."""
        return self.task.apply_async(self.args, self.kwargs, **{**self.options, **options})

    async def aapply_async(self, **options: Unpack[SendOptions]) -> TaskHandle[R]:
        """Async twin of `apply_async`."""
        return await self.task.aapply_async(self.args, self.kwargs, **{**self.options, **options})

    def call(self, timeout: float = 30.0) -> R:
        """Run the task on a worker and return its result (RPC over direct reply-to)."""
        return self.task.call(*self.args, timeout=timeout, **self.kwargs)


def signature_of(item: object, where: str) -> Signature[Any]:
    if isinstance(item, Chain):
        raise ConfigError(f"{where}: a chain inside a chain is not supported: list its steps in one chain")
    if not isinstance(item, Signature):
        raise ConfigError(
            f"{where}: expected a task signature such as task.s(...), got {type(item).__name__} {item!r:.60}"
        )
    return item


class Chain(Generic[R]):
    """Steps run one after the other; each gets the previous result as its first argument (unless `.si`)."""

    def __init__(self, steps: Iterable[Signature[Any]], *, workflow_id: str | None = None) -> None:
        self.steps = [signature_of(s, f"chain step {i}") for i, s in enumerate(steps)]
        if not self.steps:
            raise ConfigError("chain(): give at least one step, e.g. chain(fetch.s(url), parse.s())")
        apps = {id(s.task.app) for s in self.steps}
        if len(apps) > 1:
            raise ConfigError("chain(): all steps must be tasks of one app")
        self.id = workflow_id or new_id()

    @property
    def app(self) -> App:
        return self.steps[0].task.app

    def __or__(self, other: Signature[B] | Chain[B]) -> Chain[B]:
        """`chain | b.s()`: one more step (a chain on the right is flattened)."""
        return Chain([*self.steps, *(other.steps if isinstance(other, Chain) else [other])])

    def __repr__(self) -> str:
        return f"<chain {' | '.join(s.task.name for s in self.steps)}>"

    def ids(self, base: str | None = None) -> list[str]:
        """The step ids: `<id>:0`, `<id>:1`, ... (or under `base`, for a chain inside a chord)."""
        return [f"{base or self.id}:{i}" for i in range(len(self.steps))]

    def first_message(
        self, ids: list[str], chord: dict[str, Any] | None = None, workflow_id: str | None = None
    ) -> Outgoing:
        """The first step's message, carrying the others (and the chord marker) in its body."""
        first = self.steps[0]
        first.task.validate(first.args, first.kwargs)  # the first step has no previous result: complete now
        rest = [wire.step(s, i) for s, i in zip(self.steps[1:], ids[1:], strict=True)]
        spec = wire.step(first, ids[0])
        return wire.step_message(self.app, spec, [], wire.Flow(rest, chord), workflow_id or self.id)

    def handles(self, ids: list[str]) -> list[TaskHandle[Any]]:
        return [
            TaskHandle(i, s.task.name, s.options.get("queue") or s.task.queue, s.task.app)
            for s, i in zip(self.steps, ids, strict=True)
        ]

    def delay(self) -> WorkflowHandle:
        """Send the first step (the others travel in its message); return once the broker confirmed it."""
        ids = self.ids()
        self.app.send(self.first_message(ids))
        steps = self.handles(ids)
        return WorkflowHandle(self.id, steps, steps[-1])

    async def adelay(self) -> WorkflowHandle:
        """Async twin of `delay`."""
        ids = self.ids()
        await self.app.asend(self.first_message(ids))
        steps = self.handles(ids)
        return WorkflowHandle(self.id, steps, steps[-1])

    async def acall(self, timeout: float = 60.0) -> R:
        """Async twin of `call`."""
        result: R = await self.app.arpc_call(self.first_message(self.ids()), timeout)
        return result

    def call(self, timeout: float = 60.0) -> R:
        """Run the chain and return the last step's result over direct reply-to (no result backend needed).

        A step that fails for good raises its `TaskError` here; `TimeoutError` after `timeout` seconds.
        """
        result: R = self.app.rpc_call(self.first_message(self.ids()), timeout)
        return result
