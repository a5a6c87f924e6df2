"""What a worker child declares at start: its queues always, the delay ladder only when it is not all there."""

from __future__ import annotations

import asyncio

import aiormq
import pytest

from rabbittask import App, ConfigError, TopologyMismatch
from rabbittask.amqp.server import Server
from rabbittask.delays import DELAY_LEVELS, delay_level_name, delay_names, due_routing_exchange_name, unroutable_name
from rabbittask.publish.declare import declare_for_worker


async def exists(url: str, queue: str) -> bool:
    connection = await aiormq.connect(url)
    try:
        await (await connection.channel()).queue_declare(queue, passive=True)
        return True
    except aiormq.exceptions.ChannelNotFoundEntity:
        return False
    finally:
        await connection.close()


async def declare(app: App, queue: str) -> None:
    connection = await aiormq.connect(app.settings.broker_url)
    try:
        channel = await connection.channel()
        exchange = app.settings.exchange
        await declare_for_worker(connection, channel, app.declarations([queue]), delay_names(exchange))
    finally:
        await connection.close()


async def exchange_exists(url: str, exchange: str) -> bool:
    connection = await aiormq.connect(url)
    try:
        await (await connection.channel()).exchange_declare(exchange, passive=True)
        return True
    except aiormq.exceptions.ChannelNotFoundEntity:
        return False
    finally:
        await connection.close()


async def server(url: str) -> Server:
    connection = await aiormq.connect(url)
    try:
        return Server.of(connection.server_properties)
    finally:
        await connection.close()


async def delete(url: str, queue: str) -> None:
    connection = await aiormq.connect(url)
    try:
        await (await connection.channel()).queue_delete(queue)
    finally:
        await connection.close()


async def delete_exchange(url: str, exchange: str) -> None:
    connection = await aiormq.connect(url)
    try:
        await (await connection.channel()).exchange_delete(exchange)
    finally:
        await connection.close()


def test_the_ladder_is_declared_once_and_checked_by_its_last_object_after(
    broker_url: str, unique_name: str, amqp_cleanup
) -> None:
    app = App("declare", broker_url=broker_url, exchange=unique_name)
    queue = amqp_cleanup.queue(f"{unique_name}.q")
    amqp_cleanup.queue(f"{queue}.dlq")
    for level in range(DELAY_LEVELS):
        amqp_cleanup.queue(delay_level_name(unique_name, level))
    amqp_cleanup.queue(unroutable_name(unique_name))
    for name in (unique_name, f"{unique_name}.dlx", unroutable_name(unique_name), *delay_names(unique_name)):
        amqp_cleanup.exchange(name)
    app.task(queue=queue, name="t")(lambda: None)
    first, middle, last = (delay_level_name(unique_name, k) for k in (0, 5, DELAY_LEVELS - 1))

    async def main() -> None:
        # Given no ladder yet: a child declares all of it, and its queue
        await declare(app, queue)
        assert await exists(broker_url, first) and await exists(broker_url, last) and await exists(broker_url, queue)
        # When a level in the middle goes, the next start does not notice: its last object stands for all
        await delete(broker_url, middle)
        await delete(broker_url, queue)
        await declare(app, queue)
        assert not await exists(broker_url, middle)
        assert await exists(broker_url, queue)  # the consumed queue is always declared
        # When the last object goes (the due routing exchange, declared after the levels), the next start
        # declares the whole ladder again
        await delete(broker_url, last)
        await delete_exchange(broker_url, due_routing_exchange_name(unique_name))
        await declare(app, queue)
        assert await exists(broker_url, middle) and await exists(broker_url, last)

    asyncio.run(main())


def test_a_consumed_queue_with_other_arguments_is_still_a_mismatch(
    broker_url: str, unique_name: str, amqp_cleanup
) -> None:
    app = App("declare", broker_url=broker_url, exchange=unique_name)
    queue = amqp_cleanup.queue(f"{unique_name}.q")
    amqp_cleanup.queue(unroutable_name(unique_name))
    for name in (unique_name, f"{unique_name}.dlx", unroutable_name(unique_name), *delay_names(unique_name)):
        amqp_cleanup.exchange(name)
    for level in range(DELAY_LEVELS):
        amqp_cleanup.queue(delay_level_name(unique_name, level))
    app.task(queue=queue, name="t")(lambda: None)

    async def main() -> None:
        connection = await aiormq.connect(broker_url)
        await (await connection.channel()).queue_declare(queue, durable=True)  # classic: the app wants quorum
        await connection.close()
        await declare(app, queue)

    with pytest.raises(TopologyMismatch) as info:
        asyncio.run(main())
    assert f"queue '{queue}'" in str(info.value)


def test_a_quorum_queue_with_priorities_is_refused_on_3x_before_anything_is_declared(
    broker_url: str, unique_name: str, amqp_cleanup
) -> None:
    broker = asyncio.run(server(broker_url))
    if broker.quorum_priorities:
        pytest.skip(f"RabbitMQ {broker} keeps quorum queue priorities")
    app = App("declare", broker_url=broker_url, exchange=unique_name)
    queue = amqp_cleanup.queue(f"{unique_name}.q")
    amqp_cleanup.queue(f"{queue}.dlq")  # deleted should the test fail: nothing may be declared
    first_level = amqp_cleanup.queue(delay_level_name(unique_name, 0))
    for name in (unique_name, f"{unique_name}.dlx"):
        amqp_cleanup.exchange(name)
    app.task(queue=queue, name="t", max_priority=10)(lambda: None)
    refused = (
        f"queue '{queue}': max_priority on a quorum queue needs RabbitMQ 4.0+, but the broker is RabbitMQ "
        f"{broker}, whose quorum queues have no priorities; use queue_type='classic', or RabbitMQ 4.0+"
    )

    # When a publisher declares the app's topology, or a worker child the queue it consumes
    with pytest.raises(ConfigError) as published:
        app.declare()
    with pytest.raises(ConfigError) as consumed:
        asyncio.run(declare(app, queue))

    # Then both are refused with the same words, and nothing was declared: not the queue, not the ladder
    assert str(published.value) == str(consumed.value) == refused

    async def nothing_declared() -> bool:
        found = [await exists(broker_url, q) for q in (queue, f"{queue}.dlq", first_level)]
        found += [await exchange_exists(broker_url, x) for x in (unique_name, f"{unique_name}.dlx")]
        return not any(found)

    assert asyncio.run(nothing_declared())
