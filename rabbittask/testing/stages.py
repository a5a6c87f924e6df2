"""The worker child's own stages, wired to a `StubBroker` instead of a connection.

A child's message walks session → redelivery → dispatch → outcome → settle (worker/child.py). The
stub stands in for the session (it delivers) and the broker; everything after is the worker's code,
not a copy of it:

* redelivery: `Redeliveries.admit` (expired, not due, delivery limit), on the stub's clock;
* dedupe: `Dedupe.admit` for tasks with `dedupe_s` (its claim queues live in the stub, `x-expires` on
  the stub's clock);
* execute: `execute.prepare` and `run_async` for async tasks, `inline.run_as_in_a_thread` (the
  worker's inline path: `run_sync` with no running loop set) for sync tasks, so a sync task runs in
  the caller's thread, where its test's fixtures (a database transaction, mocks) are;
* settle: the `Settler`, with an `Acker` and an `AsyncPublisher` whose I/O goes to the stub
  (`StubAcker`, `StubPublisher`): acks, retry copies through the delay ladder, dead letters with
  their reason headers, direct replies and stored results are the worker's own decisions.

Not run here: time limits of sync tasks (they need the task threads), events, the supervisor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import aiormq
import aiormq.abc
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from rabbittask.message import Outgoing
from rabbittask.publish.aio import AsyncPublisher
from rabbittask.topology import QueueDecl
from rabbittask.worker.acks import Acker
from rabbittask.worker.dedupe import Dedupe
from rabbittask.worker.execute import prepare, run_async
from rabbittask.worker.inline import run_as_in_a_thread
from rabbittask.worker.outcome import Outcome
from rabbittask.worker.redelivery import Redeliveries
from rabbittask.worker.retirement import Lifecycle, Retirement
from rabbittask.worker.settle import InFlight, Settler

if TYPE_CHECKING:
    from rabbittask.testing.stub import StubBroker


class StubChannel:
    """The one channel of a stub: it never closes, so every delivery tag stays good.

    It also answers the two calls the dedupe stage makes on the publisher's channel (declare a claim
    queue, publish a marker into it): a full claim queue nacks, as on the broker.
    """

    is_closed = False

    def __init__(self, stub: StubBroker) -> None:
        self.stub = stub

    async def queue_declare(self, queue: str, *, arguments: dict[str, Any] | None = None, **_: Any) -> None:
        self.stub.declare(QueueDecl(queue, dict(arguments or {})))

    async def basic_publish(
        self,
        body: bytes,
        *,
        exchange: str = "",
        routing_key: str = "",
        properties: Basic.Properties | None = None,
        mandatory: bool = False,
        **_: Any,
    ) -> Basic.Ack:
        routed = self.stub.route(exchange, routing_key, body, properties or Basic.Properties(), mandatory=mandatory)
        if routed != "routed":
            raise aiormq.exceptions.DeliveryError(None, Basic.Nack())
        return Basic.Ack()


class StubAcker(Acker):
    """An `Acker` whose acks and rejects settle the delivery in the stub at once (nothing to coalesce)."""

    def __init__(self, stub: StubBroker, channel: aiormq.abc.AbstractChannel) -> None:
        super().__init__(channel)
        self.stub = stub

    def ack(self, tag: int) -> None:
        self.stub.ack(tag)

    def reject(self, tag: int, *, requeue: bool) -> None:
        self.stub.reject(tag, requeue=requeue)

    def hand_back(self, tag: int) -> None:
        self.stub.reject(tag, requeue=True)


class StubPublisher(AsyncPublisher):
    """An `AsyncPublisher` that publishes into the stub: a refusal raises what a broker's would."""

    def __init__(self, stub: StubBroker) -> None:
        super().__init__(stub.app.settings, (), role="stub")
        self.stub = stub

    async def publish(self, msg: Outgoing, *, alarm_wait_s: float = 0.0) -> None:
        self.stub.publish(msg)  # a stub has no resource alarms: `alarm_wait_s` has nothing to wait out

    async def channel(self) -> aiormq.abc.AbstractChannel:
        """The stub's channel (the dedupe stage claims on it)."""
        return cast(aiormq.abc.AbstractChannel, self.stub.channel)

    async def close(self) -> None:
        """Nothing to close: no connection was opened."""


def _no_limits() -> None:
    """A stub has no max-tasks budget and no memory limit."""


class Stages:
    """Admit, execute and settle, as in a worker child; made per run, on the event loop that runs them."""

    def __init__(self, stub: StubBroker) -> None:
        app = stub.app
        self.app = app
        # A stub's channel stands in for aiormq's; the stages only test it for identity and `is_closed`.
        self.channel = cast(aiormq.abc.AbstractChannel, stub.channel)
        self.flight = InFlight()
        self.redeliveries = Redeliveries(app, self._settle, list, clock=stub.now)
        publisher = StubPublisher(stub)
        self.settler = Settler(
            app,
            publisher,
            flight=self.flight,
            retirement=Retirement(),
            lifecycle=Lifecycle(),
            redeliveries=self.redeliveries,
            on_limit=_no_limits,
        )
        self.settler.acker = StubAcker(stub, self.channel)
        # As in a child: only apps with `dedupe_s` tasks pay for the stage.
        self.dedupe = Dedupe(app, publisher, self._settle) if any(t.dedupe_s for t in app.tasks.values()) else None

    def _settle(self, outcome: Outcome) -> None:
        self.settler.settle(outcome)

    async def run(self, message: DeliveredMessage) -> None:
        """One delivery, admitted, run and settled; returns once it is settled for good (copies confirmed)."""
        self.flight.add()
        if self.redeliveries.admit(message) and (self.dedupe is None or await self.dedupe.admit(message)):
            self.settler.settle(await self._execute(message))
        await self.flight.idle.wait()

    async def _execute(self, message: DeliveredMessage) -> Outcome:
        task = self.app.tasks.get(message.header.properties.message_type or "")
        if task is None or not task.is_async:
            return run_as_in_a_thread(self.app, message)  # an unknown task fails in run_sync, as in a thread
        prepared = prepare(self.app, message)
        if isinstance(prepared, Outcome):
            return prepared
        return await run_async(*prepared, message)
