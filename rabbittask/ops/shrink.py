"""Retire the partitions a smaller `partitions` no longer has, losing no message (`rabbittask topology shrink`).

Growing needs nothing: the new partitions are declared and bound, and the old ones stay. Shrinking
leaves `<queue>.p<N>` and above bound to the hash exchange, so messages would keep going to queues no
worker consumes. For each such partition (found by passive declares, `p<N>`, `p<N+1>`, ... up to the
first that is missing), in this order:

1. refuse if a consumer still reads any of them (a worker of the old deploy: stop it first);
2. unbind them all from the hash exchange, so nothing new reaches them;
3. move each message back through the task exchange, with the queue's name as routing key and its
   headers (the key among them), so the hash exchange puts it into a current partition: confirmed,
   then acked (the broker's `x-death` headers are dropped: see the dead-letter-cycle trap), read by a
   consumer since single-active-consumer quorum queues refuse `basic.get`;
4. delete it, once it is empty and has no consumer (quorum queues have no `if-empty` delete).
"""

from __future__ import annotations

from dataclasses import dataclass

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from rabbittask.app import App
from rabbittask.errors import ConfigError
from rabbittask.message import DEATH_HEADERS
from rabbittask.partitions import PARTITION_WEIGHT, partition_exchange_name, partition_queue_name
from rabbittask.topology import QueueSpec

NOT_FOUND = 404
MOVE_PREFETCH = 100
MOVE_IDLE_S = 1.0  # a partition that delivers nothing for this long is empty


@dataclass(frozen=True, slots=True)
class Retired:
    """A partition that was (or, in a dry run, would be) emptied into the current ones and deleted."""

    queue: str
    messages: int


def extra_partitions(connection: pika.BlockingConnection, spec: QueueSpec) -> list[tuple[str, int, int]]:
    """(name, messages, consumers) of each partition of `spec` at or beyond `spec.partitions` on the broker."""
    found: list[tuple[str, int, int]] = []
    index = spec.partitions
    while True:
        name = partition_queue_name(spec.name, index)
        channel = connection.channel()  # a passive declare of a missing queue closes its channel
        try:
            ok = channel.queue_declare(name, passive=True)
        except pika.exceptions.ChannelClosedByBroker as e:
            if e.reply_code == NOT_FOUND:
                return found
            raise
        found.append((name, ok.method.message_count, ok.method.consumer_count))
        channel.close()
        index += 1


def shrink(connection: pika.BlockingConnection, app: App, *, dry_run: bool = False) -> list[Retired]:
    """Empty the extra partitions of every partitioned queue of `app` into its current ones, then delete them."""
    retired = []
    for spec in sorted(app.queues.values(), key=lambda s: s.name):
        if not spec.partitions:
            continue
        extra = extra_partitions(connection, spec)
        for name, _, consumers in extra:
            if consumers:
                raise ConfigError(
                    f"partition {name!r} is still consumed ({consumers} consumer(s)): queue {spec.name!r} now has "
                    f"{spec.partitions} partitions, so these are workers of an older deploy; stop them, then run "
                    "this again (nothing was changed)"
                )
        if dry_run:
            retired += [Retired(name, messages) for name, messages, _ in extra]
            continue
        channel = connection.channel()
        channel.confirm_delivery()
        hashed = partition_exchange_name(app.settings.exchange, spec.name)
        for name, _, _ in extra:  # all of them first: a moved message must not land in another one that goes
            channel.queue_unbind(name, hashed, PARTITION_WEIGHT)
        for name, _, _ in extra:
            moved = _move(channel, name, app.settings.exchange, spec.name)
            ok = channel.queue_declare(name, passive=True)
            if ok.method.message_count or ok.method.consumer_count:
                raise ConfigError(
                    f"partition {name!r} got a message or a consumer while it was emptied (someone publishes to it "
                    "by name, or a worker started); it was not deleted: run this again"
                )
            channel.queue_delete(name)
            retired.append(Retired(name, moved))
        channel.close()
    return retired


def _move(channel: BlockingChannel, name: str, exchange: str, queue: str) -> int:
    """Re-publish every message of `name` to `queue` through `exchange`, each confirmed before its ack.

    By a consumer: quorum queues with single-active-consumer refuse `basic.get`.
    """
    moved = 0
    channel.basic_qos(prefetch_count=MOVE_PREFETCH)
    for method, props, body in channel.consume(name, inactivity_timeout=MOVE_IDLE_S):
        if method is None:  # nothing came for a while: empty (checked again before the delete)
            break
        props.headers = {k: v for k, v in (props.headers or {}).items() if k not in DEATH_HEADERS}
        channel.basic_publish(exchange, queue, body, props, mandatory=True)  # raises if nacked or unroutable
        channel.basic_ack(method.delivery_tag)
        moved += 1
    channel.cancel()
    return moved
