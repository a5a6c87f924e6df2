"""Broker helpers the rows share: declare, delete, count, pre-fill (aiormq), a ready-count watcher (pika)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiormq
import pika
from aiormq.abc import AbstractChannel

from bench.config import BODY

WINDOW = 1000  # publishes in flight, each awaiting its confirm


def queue_arguments(queue_type: str) -> dict[str, Any]:
    return {"x-queue-type": queue_type}


@asynccontextmanager
async def channel(url: str) -> AsyncIterator[AbstractChannel]:
    conn = await aiormq.connect(url)
    try:
        yield await conn.channel()
    finally:
        await conn.close()


async def declare(url: str, name: str, queue_type: str) -> None:
    async with channel(url) as ch:
        await ch.queue_declare(name, durable=True, arguments=queue_arguments(queue_type))


async def message_count(ch: AbstractChannel, name: str) -> int:
    ok = await ch.queue_declare(name, passive=True)
    return int(ok.message_count or 0)


async def wait_ready(ch: AbstractChannel, name: str, n: int, timeout_s: float = 120.0) -> None:
    """Return once the broker reports `n` messages ready in `name`."""
    deadline = time.monotonic() + timeout_s
    while (count := await message_count(ch, name)) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: {count} of {n} messages ready after {timeout_s:.0f} s")
        await asyncio.sleep(0.005)


async def publish_window(ch: AbstractChannel, name: str, n: int, body: bytes = BODY) -> None:
    """Publish `n` persistent messages with `WINDOW` confirms outstanding at any time."""
    remaining = iter(range(n))

    async def publisher() -> None:
        for _ in remaining:
            props = aiormq.spec.Basic.Properties(delivery_mode=2)  # persistent; aiormq sets message_id on it
            await ch.basic_publish(body, routing_key=name, properties=props)

    await asyncio.gather(*(publisher() for _ in range(min(WINDOW, n))))


async def prefill(url: str, name: str, n: int) -> None:
    async with channel(url) as ch:
        await publish_window(ch, name, n)
        await wait_ready(ch, name, n)


async def check_empty(url: str, name: str) -> int:
    async with channel(url) as ch:
        return await message_count(ch, name)


async def delete(url: str, names: Sequence[str], exchanges: Sequence[str] = ()) -> None:
    async with channel(url) as ch:
        for name in names:
            await ch.queue_delete(name)
        for exchange in exchanges:
            await ch.exchange_delete(exchange)


async def server_version(url: str) -> str:
    conn = await aiormq.connect(url)
    try:
        props = conn.server_properties
        product, version = (_text(props.get(k, "?")) for k in ("product", "version"))
        return f"{product} {version}"
    finally:
        await conn.close()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ReadyWatcher:
    """A pika channel that polls the queue's ready count, opened before the clock starts."""

    def __init__(self, url: str, queue: str) -> None:
        self.conn = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.conn.channel()
        self.queue = queue

    def wait(self, n: int, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while (count := self.channel.queue_declare(self.queue, passive=True).method.message_count) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.queue}: {count} of {n} messages ready after {timeout_s:.0f} s")
            time.sleep(0.005)

    def close(self) -> None:
        self.conn.close()
