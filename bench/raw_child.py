"""The raw reference's worker processes: a drain consumer (aio-pika or aiormq) and a direct reply-to echo server.

    python -m bench.raw_child drain aio-pika|aiormq QUEUE
    python -m bench.raw_child echo QUEUE
    python -m bench.raw_child consume QUEUE     (start-up rows: consume at once, until SIGTERM)

A drain consumer connects, sets prefetch, writes `<BENCH_COUNTER_DIR>/<pid>.ready`, and waits for a
line on stdin before consuming, so that several consumers start together. Each message is a no-op
task: it bumps the completion counter and is acked with `multiple=True` every `ACK_EVERY` messages;
the remainder is acked on SIGTERM, before the connection closes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aio_pika
import aiormq
from aiormq.abc import DeliveredMessage

from bench.config import broker_url
from bench.counter import ENV, Counter, process_counter

PREFETCH = 1000
ACK_EVERY = 100


async def until_stopped(on_go: Callable[[], Awaitable[None]] | None = None) -> None:
    """Say ready, wait for the go line, start via `on_go`, then run until SIGTERM or the bench goes away."""
    go, stopped = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopped.set)

    def on_stdin() -> None:
        # A line is the go signal; end of file means the bench died, so do not linger.
        (go if os.read(sys.stdin.fileno(), 64) else stopped).set()

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    Path(os.environ[ENV], f"{os.getpid()}.ready").touch()
    waits = [asyncio.create_task(go.wait()), asyncio.create_task(stopped.wait())]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    if on_go is not None and not stopped.is_set():
        await on_go()
    await stopped.wait()
    loop.remove_reader(sys.stdin.fileno())


def counter() -> Counter:
    found = process_counter()
    if found is None:
        raise SystemExit(f"{ENV} is not set")
    return found


async def drain_aio_pika(queue_name: str) -> None:
    cnt, n = counter(), 0
    pending: aio_pika.abc.AbstractIncomingMessage | None = None

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal n, pending
        cnt.start()
        cnt.done()
        n += 1
        if n % ACK_EVERY == 0:
            pending = None
            await message.ack(multiple=True)
        else:
            pending = message

    conn = await aio_pika.connect(broker_url())
    channel = await conn.channel()
    await channel.set_qos(prefetch_count=PREFETCH)
    queue = await channel.get_queue(queue_name, ensure=False)
    tags: list[str] = []

    async def consume() -> None:
        tags.append(await queue.consume(on_message))

    await until_stopped(consume)
    for tag in tags:
        await queue.cancel(tag)
    if pending is not None:
        await pending.ack(multiple=True)
    await conn.close()


async def drain_aiormq(queue_name: str) -> None:
    cnt, n, pending = counter(), 0, 0
    conn = await aiormq.connect(broker_url())
    channel = await conn.channel()
    await channel.basic_qos(prefetch_count=PREFETCH)

    async def on_message(message: DeliveredMessage) -> None:
        nonlocal n, pending
        cnt.start()
        cnt.done()
        n += 1
        tag = message.delivery_tag or 0
        if n % ACK_EVERY == 0:
            pending = 0
            await channel.basic_ack(tag, multiple=True)
        else:
            pending = tag

    tags: list[str] = []

    async def consume() -> None:
        ok = await channel.basic_consume(queue_name, on_message, no_ack=False)
        tags.append(ok.consumer_tag or "")

    await until_stopped(consume)
    for tag in tags:
        await channel.basic_cancel(tag)
    if pending:
        await channel.basic_ack(pending, multiple=True)
    await conn.close()


async def consume_at_once(queue_name: str) -> None:
    """Connect, set prefetch and consume with no barrier (the start-up row's reference), until SIGTERM."""
    conn = await aiormq.connect(broker_url())
    channel = await conn.channel()
    await channel.basic_qos(prefetch_count=PREFETCH)

    async def on_message(message: DeliveredMessage) -> None:
        await channel.basic_ack(message.delivery_tag or 0)

    await channel.basic_consume(queue_name, on_message, no_ack=False)
    stopped = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
    await stopped.wait()
    await conn.close()


async def echo(queue_name: str) -> None:
    """Reply to each request with its body, on the default exchange to `reply_to`, then ack."""
    conn = await aio_pika.connect(broker_url())
    channel = await conn.channel()
    await channel.set_qos(prefetch_count=PREFETCH)
    queue = await channel.get_queue(queue_name, ensure=False)

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        reply = aio_pika.Message(message.body, correlation_id=message.correlation_id)
        await channel.default_exchange.publish(reply, routing_key=message.reply_to or "")
        await message.ack()

    await queue.consume(on_message)
    await until_stopped()
    await conn.close()


def main(argv: list[str]) -> None:
    match argv:
        case ["drain", "aio-pika", queue]:
            asyncio.run(drain_aio_pika(queue))
        case ["drain", "aiormq", queue]:
            asyncio.run(drain_aiormq(queue))
        case ["echo", queue]:
            asyncio.run(echo(queue))
        case ["consume", queue]:
            asyncio.run(consume_at_once(queue))
        case _:
            raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
