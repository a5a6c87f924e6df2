"""What runs now: live workers from their heartbeats, and queue depths from passive declares.

`gather()` listens to `worker.*` on the `<exchange>.events` topic exchange through an exclusive,
auto-deleted queue for a few seconds (children send a heartbeat every `events_heartbeat_s`), then
passively declares each of the app's queues and its dead-letter queue. AMQP reports ready messages
and consumers; unacked counts come from the heartbeats' in-flight numbers where a queue's workers
consume it alone (the broker reports them only through its management API).
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import aiormq
import aiormq.abc
from aiormq.abc import DeliveredMessage

from rabbittask.amqp.link import Link
from rabbittask.topology import dlq_name, events_exchange_name

if TYPE_CHECKING:
    from rabbittask.app import App

LISTEN_S = 2.5


async def gather(app: App, listen_s: float = LISTEN_S) -> dict[str, Any]:
    """Workers and queues of `app` as plain data (what `rabbittask status --json` prints)."""
    settings = app.settings
    async with Link(settings, "status") as connection:
        beats = await _listen(connection, events_exchange_name(settings.exchange), listen_s, settings.declare_topology)
        mine = [b for b in beats.values() if set(b.get("queues", ())) & set(app.queues)]
        workers = workers_of(mine)
        queues = [await queue_row(connection, q, mine) for q in sorted(app.queues)]
    return {"workers": workers, "queues": queues}


async def _listen(
    connection: aiormq.abc.AbstractConnection, exchange: str, listen_s: float, declare: bool
) -> dict[tuple[str, int], dict[str, Any]]:
    channel = await connection.channel()
    try:
        await channel.exchange_declare(exchange, exchange_type="topic", durable=True, passive=not declare)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return {}  # no worker ever sent an event
    ok = await channel.queue_declare("", exclusive=True, auto_delete=True)
    assert ok.queue is not None
    await channel.queue_bind(ok.queue, exchange, routing_key="worker.*")
    beats: dict[tuple[str, int], dict[str, Any]] = {}
    offline: set[tuple[str, int]] = set()

    async def on_message(message: DeliveredMessage) -> None:
        try:
            body = json.loads(message.body)
            key = (str(body["host"]), int(body["pid"]))
        except (ValueError, KeyError, TypeError):
            return
        if message.routing_key == "worker.offline":
            offline.add(key)
            beats.pop(key, None)
        elif key not in offline:
            beats[key] = body

    await channel.basic_consume(ok.queue, on_message, no_ack=True)
    await asyncio.sleep(listen_s)
    await channel.close()
    return beats


def workers_of(beats: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Children's heartbeats summed per worker (host and supervisor pid)."""
    grouped: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for b in beats:
        grouped.setdefault((b["host"], b.get("ppid", b["pid"])), []).append(b)
    workers = []
    for (host, pid), children in sorted(grouped.items()):
        workers.append(
            {
                "host": host,
                "pid": pid,
                "queues": sorted({q for c in children for q in c.get("queues", ())}),
                "children": len(children),
                "child_pids": sorted(c["pid"] for c in children),
                "done": sum(int(c.get("done", 0)) for c in children),
                "failed": sum(int(c.get("failed", 0)) for c in children),
                "retried": sum(int(c.get("retried", 0)) for c in children),
                "dead_lettered": sum(int(c.get("dead_lettered", 0)) for c in children),
                "reconnects": sum(int(c.get("reconnects", 0)) for c in children),
                "in_flight": sum(int(c.get("in_flight", 0)) for c in children),
                "consuming": all(c.get("consuming", False) for c in children),
                "uptime_s": max(float(c.get("uptime_s", 0.0)) for c in children),
            }
        )
    return workers


async def queue_row(
    connection: aiormq.abc.AbstractConnection, name: str, beats: list[dict[str, Any]]
) -> dict[str, Any]:
    """Depth, consumers and DLQ depth of task queue `name`; unacked from the heartbeats `beats`, where it can tell."""
    ready, consumers = await queue_depth(connection, name)
    dlq_ready, _ = await queue_depth(connection, dlq_name(name))
    readers = [b for b in beats if name in b.get("queues", ())]
    alone = all(list(b.get("queues", ())) == [name] for b in readers)
    return {
        "name": name,
        "exists": ready is not None,
        "ready": ready,
        "unacked": sum(int(b.get("in_flight", 0)) for b in readers) if alone else None,
        "consumers": consumers or 0,
        "dlq": dlq_name(name),
        "dlq_ready": dlq_ready,
    }


async def queue_depth(connection: aiormq.abc.AbstractConnection, queue: str) -> tuple[int | None, int | None]:
    """(ready messages, consumers) of `queue`, or (None, None) when it does not exist."""
    channel = await connection.channel()  # a missing queue closes its channel
    try:
        ok = await channel.queue_declare(queue, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return None, None
    await channel.close()
    return ok.message_count, ok.consumer_count
