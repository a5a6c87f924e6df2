"""What runs now: live workers from their heartbeats, and queue depths from passive declares.

`gather()` listens to `worker.*` on the `<exchange>.events` topic exchange through an exclusive,
auto-deleted queue for a few seconds (children send a heartbeat every `events_heartbeat_s`), then
passively declares each of the app's queues and its dead-letter queue, and `<exchange>.unroutable` (delayed
messages whose task queue was gone when they came due). AMQP reports ready messages
and consumers; unacked counts come from the heartbeats' in-flight numbers where a queue's workers
consume it alone (the broker reports them only through its management API). Running chords (members
reported of all) come from the heartbeats of the children whose joiner is active.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import aiormq
import aiormq.abc
from aiormq.abc import DeliveredMessage

from rabbittask.amqp.link import Link
from rabbittask.delays import unroutable_name
from rabbittask.ops.heartbeat import OFFLINE, ROUTING_KEYS, Heartbeat
from rabbittask.partitions import partition_queue_name
from rabbittask.topology import dlq_name, events_exchange_name

if TYPE_CHECKING:
    from rabbittask.app import App

LISTEN_S = 2.5


async def gather(app: App, listen_s: float = LISTEN_S) -> dict[str, Any]:
    """Workers and queues of `app` as plain data (what `rabbittask status --json` prints)."""
    settings = app.settings
    async with Link(settings, "status") as connection:
        beats = await _listen(connection, events_exchange_name(settings.exchange), listen_s, settings.declare_topology)
        mine = beats_of(beats.values(), app.queues)
        workers = workers_of(mine)
        queues = [await queue_row(connection, q, mine, app.queues[q].partitions) for q in sorted(app.queues)]
        unroutable = await unroutable_row(connection, settings.exchange)
    return {"workers": workers, "queues": queues, "workflows": workflows_of(mine), "unroutable": unroutable}


def workflows_of(beats: Iterable[Heartbeat]) -> list[dict[str, Any]]:
    """Chords being joined now, from the active joiners' heartbeats: members reported of all."""
    chords: dict[str, tuple[int, int]] = {}
    for beat in beats:
        for chord_id, done, total in beat.chords:
            known = chords.get(chord_id, (0, 0))
            chords[chord_id] = (max(known[0], done), max(known[1], total))
    return [{"id": i, "done": d, "total": t} for i, (d, t) in sorted(chords.items(), key=lambda kv: -kv[1][0])]


async def _listen(
    connection: aiormq.abc.AbstractConnection, exchange: str, listen_s: float, declare: bool
) -> dict[tuple[str, int], Heartbeat]:
    channel = await connection.channel()
    try:
        await channel.exchange_declare(exchange, exchange_type="topic", durable=True, passive=not declare)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return {}  # no worker ever sent an event
    ok = await channel.queue_declare("", exclusive=True, auto_delete=True)
    assert ok.queue is not None
    await channel.queue_bind(ok.queue, exchange, routing_key=ROUTING_KEYS)
    beats: dict[tuple[str, int], Heartbeat] = {}
    offline: set[tuple[str, int]] = set()

    async def on_message(message: DeliveredMessage) -> None:
        try:
            beat = Heartbeat.decode(message.body)
        except ValueError:
            return
        if message.routing_key == OFFLINE:
            offline.add(beat.key)
            beats.pop(beat.key, None)
        elif beat.key not in offline:
            beats[beat.key] = beat

    await channel.basic_consume(ok.queue, on_message, no_ack=True)
    await asyncio.sleep(listen_s)
    await channel.close()
    return beats


def beats_of(beats: Iterable[Heartbeat], queues: Collection[str]) -> list[Heartbeat]:
    """The heartbeats of children that consume one of `queues` (apps may share an events exchange)."""
    wanted = set(queues)
    return [b for b in beats if wanted.intersection(b.queues)]


def workers_of(beats: Sequence[Heartbeat]) -> list[dict[str, Any]]:
    """Children's heartbeats summed per worker (host and supervisor pid)."""
    grouped: dict[tuple[str, int], list[Heartbeat]] = {}
    for b in beats:
        grouped.setdefault(b.supervisor, []).append(b)
    workers = []
    for (host, pid), children in sorted(grouped.items()):
        workers.append(
            {
                "host": host,
                "pid": pid,
                "queues": sorted({q for c in children for q in c.queues}),
                "children": len(children),
                "child_pids": sorted(c.pid for c in children),
                "done": sum(c.done for c in children),
                "failed": sum(c.failed for c in children),
                "retried": sum(c.retried for c in children),
                "dead_lettered": sum(c.dead_lettered for c in children),
                "reconnects": sum(c.reconnects for c in children),
                "in_flight": sum(c.in_flight for c in children),
                "consuming": all(c.consuming for c in children),
                "uptime_s": max(c.uptime_s for c in children),
            }
        )
    return workers


async def queue_row(
    connection: aiormq.abc.AbstractConnection, name: str, beats: Sequence[Heartbeat], partitions: int = 0
) -> dict[str, Any]:
    """Depth, consumers and DLQ depth of task queue `name`; unacked from the heartbeats `beats`, where it can tell.

    A partitioned queue (`partitions` > 0) adds a row per partition, with the worker child active on it as
    its heartbeats say; its ready count is their sum, its consumers the fewest any partition has.
    """
    if partitions:
        rows = [await partition_row(connection, partition_queue_name(name, i), beats) for i in range(partitions)]
        missing = any(r["ready"] is None for r in rows)
        ready = None if missing else sum(r["ready"] for r in rows)
        consumers = None if missing else min(r["consumers"] for r in rows)
    else:
        ready, consumers = await queue_depth(connection, name)
    dlq_ready, _ = await queue_depth(connection, dlq_name(name))
    readers = [b for b in beats if name in b.queues]
    alone = all(list(b.queues) == [name] for b in readers)
    exists = ready is not None
    return {
        "name": name,
        "exists": exists,
        "ready": ready,
        "unacked": sum(b.in_flight for b in readers) if alone and exists else None,
        "consumers": consumers if exists else None,  # unknown, not 0: there is no queue to consume
        "dlq": dlq_name(name),
        "dlq_ready": dlq_ready,
        **({"partitions": rows} if partitions else {}),
    }


async def partition_row(
    connection: aiormq.abc.AbstractConnection, name: str, beats: Sequence[Heartbeat]
) -> dict[str, Any]:
    """Depth and consumers of one partition queue, and `host:pid` of the child whose heartbeat says it is active."""
    ready, consumers = await queue_depth(connection, name)
    active = next((f"{b.host}:{b.pid}" for b in beats if name in b.active_partitions), None)
    return {"name": name, "ready": ready, "consumers": consumers, "active": active}


async def unroutable_row(connection: aiormq.abc.AbstractConnection, exchange: str) -> dict[str, Any]:
    """Delayed messages that came due for a task queue that no longer exists (`<exchange>.unroutable`)."""
    name = unroutable_name(exchange)
    ready, _ = await queue_depth(connection, name)
    return {"queue": name, "ready": ready}


async def queue_depth(connection: aiormq.abc.AbstractConnection, queue: str) -> tuple[int | None, int | None]:
    """(ready messages, consumers) of `queue`, or (None, None) when it does not exist."""
    channel = await connection.channel()  # a missing queue closes its channel
    try:
        ok = await channel.queue_declare(queue, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return None, None
    await channel.close()
    return ok.message_count, ok.consumer_count
