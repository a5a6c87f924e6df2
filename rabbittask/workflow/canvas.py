"""`chain`, `group` and `chord`: workflows built from signatures, with every id fixed when they are built.

Ids derive from the workflow's id: the steps of a chain are `<id>:0`, `<id>:1`, ...; the members of a
group or chord `<id>:0`, ...; a chord's callback `<id>:callback`, its error handler `<id>:on_error`.
A repeat after a crash carries the same id, so it is recognisable, and `delay()` can hand out the
handles of every step before any of them ran.

    chain(fetch.s(url), parse.s(), store.s()).delay()      # or fetch.s(url) | parse.s() | store.s()
    group(resize.s(i) for i in ids).delay()                 # one confirmed batch, streamed
    chord((score.s(d) for d in docs), rank.s()).delay()     # rank gets the scores, in member order
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Iterator
from contextlib import AsyncExitStack, ExitStack
from typing import TYPE_CHECKING, Any, TypeVar, overload

from rabbittask.amqp import blocking
from rabbittask.errors import ConfigError
from rabbittask.message import new_id
from rabbittask.task import TaskHandle
from rabbittask.workflow import wire
from rabbittask.workflow.handles import WorkflowHandle
from rabbittask.workflow.signature import Chain, Signature, signature_of

if TYPE_CHECKING:
    from rabbittask.app import App

A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")


@overload
def chain(a: Signature[A], /) -> Chain[A]: ...
@overload
def chain(a: Signature[Any], b: Signature[B], /) -> Chain[B]: ...
@overload
def chain(a: Signature[Any], b: Signature[Any], c: Signature[C], /) -> Chain[C]: ...
@overload
def chain(*steps: Signature[Any]) -> Chain[Any]: ...


def chain(*steps: Signature[Any]) -> Chain[Any]:
    """Steps run one after the other, each with the previous result first: `chain(a.s(x), b.s(), c.s())`."""
    return Chain(steps)


Member = Signature[Any] | Chain[Any]


_JOIN_DECLARED: set[tuple[int, int]] = set()  # (app, pid) that declared the join queue


def declare_join_queue(app: App) -> None:
    """Declare the join queue once per app and process, before a chord's members go out.

    Workers' joiners declare it too; a producer does it before its first chord, so that members never
    report to a queue that does not exist yet. With `declare_topology=False` it is the admin's job.
    """
    key = (id(app), os.getpid())
    if key in _JOIN_DECLARED or not app.settings.declare_topology or app.clients.local is not None:
        return
    connection = blocking.connect(app.settings, "declare", "declare the chord join queue on")
    try:
        queue = wire.join_queue_name(app.settings.exchange, app.settings.join_queue)
        connection.channel().queue_declare(queue, durable=True, arguments=wire.join_queue_arguments())
    finally:
        blocking.close_quietly(connection)
    _JOIN_DECLARED.add(key)


class group:  # noqa: N801 - named like Celery's, a user writes group(...)
    """Members run in parallel: `group(resize.s(i) for i in ids).delay()` sends them in one confirmed batch.

    A generator is read as it is sent (in chunks), never held as a whole list of signatures.
    """

    def __init__(self, *members: Member | Iterable[Member], workflow_id: str | None = None) -> None:
        if len(members) == 1 and not isinstance(members[0], Signature | Chain):
            self._members: Iterable[Member] = members[0]
        else:
            self._members = members  # type: ignore[assignment]
        self.id = workflow_id or new_id()
        self._used = False

    def __repr__(self) -> str:
        return f"<group {self.id}>"

    def _iterate(self) -> Iterator[Member]:
        if self._used and not isinstance(self._members, list | tuple):
            raise ConfigError(f"group {self.id}: its generator of members was used up by an earlier send")
        self._used = True
        for i, member in enumerate(self._members):
            if not isinstance(member, Signature | Chain):
                raise ConfigError(
                    f"group {self.id}: member {i} is {type(member).__name__} {member!r:.60}, expected task.s(...)"
                )
            yield member

    def _send_members(self, chord: str | None) -> tuple[App | None, list[TaskHandle[Any]]]:
        """Send every member in one batch (opened with the first member's app); return the app and their handles."""
        app: App | None = None
        lasts: list[TaskHandle[Any]] = []
        with ExitStack() as batch:
            for i, member in enumerate(self._iterate()):
                flow = member if isinstance(member, Chain) else Chain([member], workflow_id=self.id)
                if app is None:
                    app = flow.app
                    if chord is not None:
                        declare_join_queue(app)
                    batch.enter_context(app.batch())
                elif flow.app is not app:
                    raise ConfigError(f"group {self.id}: all members must be tasks of one app")
                ids = [f"{self.id}:{i}"] if len(flow.steps) == 1 else flow.ids(f"{self.id}:{i}")
                marker = {"id": chord, "index": i} if chord is not None else None
                app.send(flow.first_message(ids, marker, self.id))
                lasts.append(flow.handles(ids)[-1])
        return app, lasts

    async def _asend_members(self, chord: str | None) -> tuple[App | None, list[TaskHandle[Any]]]:
        """Async twin of `_send_members`."""
        app: App | None = None
        lasts: list[TaskHandle[Any]] = []
        async with AsyncExitStack() as batch:
            for i, member in enumerate(self._iterate()):
                flow = member if isinstance(member, Chain) else Chain([member], workflow_id=self.id)
                if app is None:
                    app = flow.app
                    if chord is not None:
                        await asyncio.to_thread(declare_join_queue, app)
                    await batch.enter_async_context(app.abatch())
                elif flow.app is not app:
                    raise ConfigError(f"group {self.id}: all members must be tasks of one app")
                ids = [f"{self.id}:{i}"] if len(flow.steps) == 1 else flow.ids(f"{self.id}:{i}")
                marker = {"id": chord, "index": i} if chord is not None else None
                await app.asend(flow.first_message(ids, marker, self.id))
                lasts.append(flow.handles(ids)[-1])
        return app, lasts

    async def adelay(self) -> WorkflowHandle:
        """Async twin of `delay`."""
        _app, lasts = await self._asend_members(None)
        return WorkflowHandle(self.id, lasts, None, members=lasts)

    async def acall(self, timeout: float = 60.0) -> list[Any]:
        """Async twin of `call`."""
        results: list[Any] = await _Chord(self, None).acall(timeout)
        return results

    def delay(self) -> WorkflowHandle:
        """Send every member in one confirmed batch; the handle's `members` are their handles."""
        _app, lasts = self._send_members(None)
        return WorkflowHandle(self.id, lasts, None, members=lasts)

    def call(self, timeout: float = 60.0) -> list[Any]:
        """Run the group and return the members' results in order, over direct reply-to (joined on the broker)."""
        results: list[Any] = _Chord(self, None).call(timeout)
        return results


class _Chord:
    """The header group and what runs once every member settled for good."""

    def __init__(
        self,
        header: group,
        body: Member | None,
        *,
        on_error: Member | None = None,
        allow_failures: bool = False,
    ) -> None:
        self.header = header
        self.body = body if body is None or isinstance(body, Chain) else Chain([signature_of(body, "chord body")])
        self.on_error = (
            on_error
            if on_error is None or isinstance(on_error, Chain)
            else Chain([signature_of(on_error, "chord on_error")])
        )
        self.allow_failures = allow_failures
        self.id = header.id

    def _start(self, app: App, size: int) -> Any:
        def steps(flow: Chain[Any] | None, name: str) -> list[dict[str, Any]] | None:
            if flow is None:
                return None
            ids = [f"{self.id}:{name}", *(f"{self.id}:{name}:{i}" for i in range(1, len(flow.steps)))]
            return [wire.step(s, i) for s, i in zip(flow.steps, ids, strict=True)]

        record = {
            "kind": "start",
            "chord": self.id,
            "size": size,
            "callback": steps(self.body, "callback"),
            "on_error": steps(self.on_error, "on_error"),
            "allow_failures": self.allow_failures,
        }
        queue = wire.join_queue_name(app.settings.exchange, app.settings.join_queue)
        return wire.record_message(queue, record, self.id, app.settings.max_payload_bytes)

    def _callback_handle(self, flow: Chain[Any] | None, name: str) -> TaskHandle[Any] | None:
        if flow is None:
            return None
        last = flow.steps[-1]
        suffix = "" if len(flow.steps) == 1 else f":{len(flow.steps) - 1}"
        return TaskHandle(f"{self.id}:{name}{suffix}", last.task.name, last.task.queue, last.task.app)

    def delay(self) -> WorkflowHandle:
        """Send the members in one confirmed batch, then the start record; the handle knows every id."""
        app, lasts = self.header._send_members(self.id)
        if app is None:
            raise ConfigError(f"chord {self.id}: it has no members; give at least one")
        app.send(self._start(app, len(lasts)))
        callback = self._callback_handle(self.body, "callback")
        return WorkflowHandle(
            self.id, lasts, callback, members=lasts, on_error=self._callback_handle(self.on_error, "on_error")
        )

    def call(self, timeout: float = 60.0) -> Any:
        """Run the chord and return the callback's result over direct reply-to; a failed chord raises."""
        app, lasts = self.header._send_members(self.id)
        if app is None:
            raise ConfigError(f"chord {self.id}: it has no members; give at least one")
        return app.rpc_call(self._start(app, len(lasts)), timeout)

    async def adelay(self) -> WorkflowHandle:
        """Async twin of `delay`."""
        app, lasts = await self.header._asend_members(self.id)
        if app is None:
            raise ConfigError(f"chord {self.id}: it has no members; give at least one")
        await app.asend(self._start(app, len(lasts)))
        callback = self._callback_handle(self.body, "callback")
        on_error = self._callback_handle(self.on_error, "on_error")
        return WorkflowHandle(self.id, lasts, callback, members=lasts, on_error=on_error)

    async def acall(self, timeout: float = 60.0) -> Any:
        """Async twin of `call`."""
        app, lasts = await self.header._asend_members(self.id)
        if app is None:
            raise ConfigError(f"chord {self.id}: it has no members; give at least one")
        return await app.arpc_call(self._start(app, len(lasts)), timeout)


class chord(_Chord):  # noqa: N801 - named like Celery's
    """`chord(header, body)`: run the header's members in parallel, then `body` with their results in order.

    The join happens on the broker (no result backend): members report to the join queue, a worker's
    joiner sends `body` once all settled. A member that failed for good (dead-lettered) makes the chord
    fail: `on_error` runs with the failed members (id, index, reason) and `body` does not. With
    `allow_failures=True`, `body` runs and gets a failure record in a failed member's place.
    """

    def __init__(
        self,
        header: group | Iterable[Member],
        body: Member | None = None,
        *,
        on_error: Member | None = None,
        allow_failures: bool = False,
    ) -> None:
        super().__init__(
            header if isinstance(header, group) else group(header),
            body,
            on_error=on_error,
            allow_failures=allow_failures,
        )

    def __repr__(self) -> str:
        return f"<chord {self.id}>"
