"""The dedupe stage without a broker: which messages it claims, and what a lost claim does."""

from __future__ import annotations

from typing import Any

import aiormq
from aiormq.abc import DeliveredMessage
from pamqp import commands
from pamqp.header import ContentHeader

from rabbittask import App
from rabbittask.worker.dedupe import Dedupe, dedupe_queue_name
from rabbittask.worker.outcome import Outcome, Reason


class Channel:
    """Claims like the broker's full queue: the first marker per queue is confirmed, later ones nacked."""

    def __init__(self) -> None:
        self.declared: list[tuple[str, dict[str, Any]]] = []
        self.markers: set[str] = set()

    async def queue_declare(self, name: str, *, durable: bool, arguments: dict[str, Any]) -> None:
        assert durable
        self.declared.append((name, arguments))

    async def basic_publish(self, body: bytes, *, routing_key: str, **_: Any) -> commands.Basic.Ack:
        if routing_key in self.markers:
            raise aiormq.exceptions.DeliveryError(None, None)
        self.markers.add(routing_key)
        return commands.Basic.Ack()


class Publisher:
    def __init__(self) -> None:
        self.channel_ = Channel()

    async def channel(self) -> Channel:
        return self.channel_


def _app() -> App:
    app = App("dedupe", exchange="rt")

    @app.task(queue="q", name="once", dedupe_s=30)
    def once() -> None: ...

    @app.task(queue="q", name="plain")
    def plain() -> None: ...

    return app


def _message(task: str, *, attempt: int = 1, redelivered: bool = False, resent: bool = False) -> DeliveredMessage:
    headers: dict[str, Any] = {"rt-attempt": attempt}
    if resent:
        headers["rt-resent"] = 1
    props = commands.Basic.Properties(message_id="id-1", message_type=task, headers=headers)
    deliver = commands.Basic.Deliver("ctag", 1, redelivered, "rt", "q")
    return DeliveredMessage(deliver, ContentHeader(properties=props), b"{}", None)  # type: ignore[arg-type]


async def test_the_second_copy_of_an_id_and_attempt_is_settled_as_a_duplicate_and_a_retry_runs() -> None:
    settled: list[Outcome] = []
    publisher = Publisher()
    dedupe = Dedupe(_app(), publisher, settled.append)  # type: ignore[arg-type]
    assert await dedupe.admit(_message("once"))
    assert not await dedupe.admit(_message("once", resent=True))
    assert [o.reason for o in settled] == [Reason.DUPLICATE]
    assert await dedupe.admit(_message("once", attempt=2))  # a retry is a new attempt
    name, arguments = publisher.channel_.declared[0]
    assert name == "rt.dedupe.id-1.1"
    assert arguments == {
        "x-queue-type": "classic",
        "x-max-length": 1,
        "x-overflow": "reject-publish",
        "x-expires": 30000,
    }


async def test_redeliveries_and_tasks_without_a_window_are_not_claimed() -> None:
    publisher = Publisher()
    dedupe = Dedupe(_app(), publisher, lambda o: None)  # type: ignore[arg-type]
    assert await dedupe.admit(_message("plain"))
    assert await dedupe.admit(_message("plain"))
    assert await dedupe.admit(_message("once", redelivered=True))  # the same message: its first run was cut off
    assert publisher.channel_.declared == []


async def test_a_claim_that_cannot_be_made_lets_the_message_run() -> None:
    class Broken(Publisher):
        async def channel(self) -> Channel:
            raise aiormq.exceptions.ChannelInvalidStateError("closed")

    dedupe = Dedupe(_app(), Broken(), lambda o: None)  # type: ignore[arg-type]
    assert await dedupe.admit(_message("once"))


def test_a_long_id_is_claimed_by_its_hash_within_the_queue_name_limit() -> None:
    name = dedupe_queue_name("rabbittask", "x" * 300, 2)
    assert len(name.encode()) < 255 and name.startswith("rabbittask.dedupe.") and name.endswith(".2")
