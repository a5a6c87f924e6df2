"""A publisher keeps working after the broker nacks a message or closes its channel (404): the failed
publish raises a clear error and the next one succeeds, on the same channel or a reopened one."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pika
import pytest

from rabbittask import App, PublishNotConfirmed


@pytest.fixture
def app(broker_url: str, unique_name: str) -> Iterator[App]:
    """Topology applied by hand: the task exchange and two queues, one full; no delay ladder."""
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    channel = connection.channel()
    channel.exchange_declare(unique_name, "direct", durable=True)
    full_args = {"x-queue-type": "classic", "x-max-length": 1, "x-overflow": "reject-publish"}
    for queue, args in ((f"{unique_name}.ok", {"x-queue-type": "quorum"}), (f"{unique_name}.full", full_args)):
        channel.queue_declare(queue, durable=True, arguments=args)
        channel.queue_bind(queue, unique_name, queue)
    app = App("recovery", broker_url=broker_url, exchange=unique_name, declare_topology=False, publish_timeout_s=5)

    @app.task(queue=f"{unique_name}.ok", name="recovery.ok")
    def ok(n: int) -> None: ...

    @app.task(queue=f"{unique_name}.full", name="recovery.full")
    def full(n: int) -> None: ...

    try:
        yield app
    finally:
        app.close()
        for queue in (f"{unique_name}.ok", f"{unique_name}.full"):
            channel.queue_delete(queue)
        channel.exchange_delete(unique_name)
        connection.close()


MISSING = r"exchange '.*delay.*' does not exist on the broker .*NOT_FOUND.*topology apply"


async def test_an_async_publisher_goes_on_after_a_nack_and_after_the_broker_closes_its_channel(app: App) -> None:
    ok, full = app.tasks["recovery.ok"], app.tasks["recovery.full"]
    await full.adelay(1)
    with pytest.raises(PublishNotConfirmed, match=r"rejected by the broker \(nack\)"):
        await full.adelay(2)
    await ok.adelay(3)  # same channel: a nack leaves it open
    # A delayed task goes to the delay ladder, which nobody applied: the broker closes the channel (404).
    with pytest.raises(PublishNotConfirmed, match=MISSING) as info:
        await ok.aapply_async((4,), countdown=5)
    assert "lost the connection" not in str(info.value)
    await ok.adelay(5)  # on a reopened channel
    await ok.adelay(6)


def test_a_sync_publisher_goes_on_after_a_nack_and_after_the_broker_closes_its_channel(app: App) -> None:
    ok, full = app.tasks["recovery.ok"], app.tasks["recovery.full"]
    full.delay(1)
    with pytest.raises(PublishNotConfirmed, match=r"rejected by the broker \(nack\)"):
        full.delay(2)
    ok.delay(3)
    with pytest.raises(PublishNotConfirmed, match=MISSING) as info:
        ok.apply_async((4,), countdown=5)
    assert "reachable" not in str(info.value)
    ok.delay(5)
    ok.delay(6)
    asyncio.run(ok.adelay(7))  # the async publisher of another loop is not disturbed either
