"""The raw reference rows: the same work done directly with pika, aio-pika and aiormq.

Each row declares its queue (durable, `x-queue-type` of the row), publishes persistent messages,
and ends an enqueue when the broker reports every message ready. Drains run in worker
subprocesses (`bench.raw_child`) like rabbittask's worker, and count completions the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aio_pika
import pika

from bench import broker, drain
from bench.config import BODY
from bench.procs import python_module, spawn, stop
from bench.row import Measurement, RowContext, percentile

WARMUP_CALLS = 20
REPLY_TO = "amq.rabbitmq.reply-to"


def declare(ctx: RowContext) -> None:
    asyncio.run(broker.declare(ctx.url, ctx.queue, ctx.queue_type))
    ctx.delete_queues.append(ctx.queue)


def a1_pika(ctx: RowContext) -> Measurement:
    """Sequential basic_publish on a BlockingConnection with confirm_delivery: one confirm per message."""
    declare(ctx)
    conn = pika.BlockingConnection(pika.URLParameters(ctx.url))
    channel = conn.channel()
    channel.confirm_delivery()
    props = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
    watcher = broker.ReadyWatcher(ctx.url, ctx.queue)
    try:
        channel.basic_publish("", ctx.queue, BODY, props)  # warm-up, as the rabbittask row does
        started = time.perf_counter()
        for _ in range(ctx.n):
            channel.basic_publish("", ctx.queue, BODY, props)
        watcher.wait(ctx.n + 1)
        return Measurement(ctx.n / (time.perf_counter() - started))
    finally:
        watcher.close()
        conn.close()


async def _a2_aio_pika(ctx: RowContext) -> float:
    conn = await aio_pika.connect(ctx.url)
    try:
        exchange = (await conn.channel(publisher_confirms=True)).default_exchange
        await exchange.publish(aio_pika.Message(BODY, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), ctx.queue)
        async with broker.channel(ctx.url) as watch:
            remaining = iter(range(ctx.n))

            async def publisher() -> None:
                for _ in remaining:
                    message = aio_pika.Message(BODY, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
                    await exchange.publish(message, ctx.queue)

            started = time.perf_counter()
            await asyncio.gather(*(publisher() for _ in range(broker.WINDOW)))
            await broker.wait_ready(watch, ctx.queue, ctx.n + 1)
            return ctx.n / (time.perf_counter() - started)
    finally:
        await conn.close()


def a2_aio_pika(ctx: RowContext) -> Measurement:
    """aio-pika publishes with confirms, 1000 in flight (1000 publishers, each awaiting its confirm)."""
    declare(ctx)
    return Measurement(asyncio.run(_a2_aio_pika(ctx)))


async def _a2_aiormq(ctx: RowContext) -> float:
    async with broker.channel(ctx.url) as ch, broker.channel(ctx.url) as watch:
        await broker.publish_window(ch, ctx.queue, 1)  # warm-up
        started = time.perf_counter()
        await broker.publish_window(ch, ctx.queue, ctx.n)
        await broker.wait_ready(watch, ctx.queue, ctx.n + 1)
        return ctx.n / (time.perf_counter() - started)


def a2_aiormq(ctx: RowContext) -> Measurement:
    """The same publishing loop on aiormq directly."""
    declare(ctx)
    return Measurement(asyncio.run(_a2_aiormq(ctx)))


def drain_with(lib: str, processes: int) -> Callable[[RowContext], Measurement]:
    def row(ctx: RowContext) -> Measurement:
        declare(ctx)
        asyncio.run(broker.prefill(ctx.url, ctx.queue, ctx.n))
        cmd = python_module("bench.raw_child", "drain", lib, ctx.queue)
        procs = [spawn(cmd, ctx.workdir, f"{lib}-{i}") for i in range(processes)]
        result = drain.measure(ctx.url, ctx.queue, ctx.n, ctx.workdir, procs, barrier=True)
        return Measurement(result.rate, memory=result.memory, leftover=result.leftover)

    row.__doc__ = f"{lib} consumer, prefetch 1000, ack multiple per 100, {processes} process(es)"
    return row


async def _call_client(ctx: RowContext) -> list[float]:
    conn = await aio_pika.connect(ctx.url)
    try:
        channel = await conn.channel()
        waiting: dict[str, asyncio.Future[bytes]] = {}

        async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            future = waiting.pop(message.correlation_id or "", None)
            if future is not None and not future.done():
                future.set_result(message.body)

        # Direct reply-to: consume the pseudo-queue, no-ack, on the publishing channel, before publishing.
        await (await channel.get_queue(REPLY_TO, ensure=False)).consume(on_reply, no_ack=True)
        latencies_ms: list[float] = []
        loop = asyncio.get_running_loop()
        for i in range(WARMUP_CALLS + ctx.n):
            future: asyncio.Future[bytes] = loop.create_future()
            waiting[str(i)] = future
            message = aio_pika.Message(
                BODY, correlation_id=str(i), reply_to=REPLY_TO, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
            )
            started = time.perf_counter()
            await channel.default_exchange.publish(message, ctx.queue)
            await asyncio.wait_for(future, 10)
            if i >= WARMUP_CALLS:
                latencies_ms.append((time.perf_counter() - started) * 1000)
        return latencies_ms
    finally:
        await conn.close()


def call_echo(ctx: RowContext) -> Measurement:
    """aio-pika client over direct reply-to, an aio-pika echo server in its own process; sequential calls."""
    declare(ctx)
    server = spawn(python_module("bench.raw_child", "echo", ctx.queue), ctx.workdir, "echo")
    try:
        drain.wait_ready_files(ctx.workdir, [server])
        latencies = asyncio.run(_call_client(ctx))
    finally:
        stop([server])
    return Measurement(percentile(latencies, 50), p99_ms=percentile(latencies, 99))
