"""Apply topology declarations on a pika or aiormq channel, turning refusals into clear errors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aiormq
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from rabbittask.amqp.server import Server, for_server
from rabbittask.errors import TopologyMismatch
from rabbittask.partitions import plugin_missing
from rabbittask.topology import (
    BindingDecl,
    Declaration,
    ExchangeBindingDecl,
    ExchangeDecl,
    QueueDecl,
    explain_precondition,
)

PRECONDITION_FAILED = 406
NOT_FOUND = 404


def _wanted(decl: Declaration) -> dict[str, Any]:
    return decl.arguments if isinstance(decl, ExchangeDecl | QueueDecl) else {}


def sync_server(channel: BlockingChannel) -> Server:
    """The broker version a pika channel's connection reached."""
    impl = getattr(channel.connection, "_impl", None)
    return Server.of(getattr(impl, "server_properties", None))


def async_server(channel: aiormq.abc.AbstractChannel) -> Server:
    """The broker version an aiormq channel's connection reached."""
    return Server.of(getattr(channel.connection, "server_properties", None))


def declare_sync(channel: BlockingChannel, decls: Sequence[Declaration]) -> None:
    """Declare everything on a pika channel, as its broker's version needs; `TopologyMismatch` if inequivalent."""
    for d in for_server(decls, sync_server(channel)):
        try:
            if isinstance(d, ExchangeDecl):
                channel.exchange_declare(d.name, d.type, durable=True, arguments=d.arguments or None)
            elif isinstance(d, QueueDecl) and d.adopt:
                adopt_sync(channel, d.name)
            elif isinstance(d, QueueDecl):
                channel.queue_declare(d.name, durable=True, arguments=d.arguments)
            elif isinstance(d, ExchangeBindingDecl):
                channel.exchange_bind(d.destination, d.source, routing_key=d.routing_key)
            else:
                channel.queue_bind(d.queue, d.exchange, routing_key=d.routing_key)
        except pika.exceptions.ChannelClosedByBroker as e:
            if e.reply_code == PRECONDITION_FAILED:
                raise TopologyMismatch(explain_precondition(e.reply_text, _wanted(d))) from None
            raise
        except pika.exceptions.ConnectionClosedByBroker as e:  # an unknown exchange type closes the connection
            raise plugin_missing(e.reply_text) or e from None


async def declare_async(channel: aiormq.abc.AbstractChannel, decls: Sequence[Declaration]) -> None:
    """Declare everything on an aiormq channel, as its broker's version needs; `TopologyMismatch` if inequivalent."""
    for d in for_server(decls, async_server(channel)):
        try:
            if isinstance(d, ExchangeDecl):
                await channel.exchange_declare(d.name, exchange_type=d.type, durable=True, arguments=d.arguments)
            elif isinstance(d, QueueDecl) and d.adopt:
                await adopt_async(channel, d.name)
            elif isinstance(d, QueueDecl):
                await channel.queue_declare(d.name, durable=True, arguments=d.arguments)
            elif isinstance(d, BindingDecl):
                await channel.queue_bind(d.queue, d.exchange, routing_key=d.routing_key)
            elif isinstance(d, ExchangeBindingDecl):
                await channel.exchange_bind(d.destination, d.source, routing_key=d.routing_key)
        except aiormq.exceptions.ChannelPreconditionFailed as e:
            raise TopologyMismatch(explain_precondition(str(e.args[0] if e.args else e), _wanted(d))) from None
        except aiormq.exceptions.ConnectionCommandInvalid as e:  # an unknown exchange type closes the connection
            raise plugin_missing(str(e.args[0] if e.args else e)) or e from None


def adopt_sync(channel: BlockingChannel, queue: str) -> None:
    """Use `queue` as it is if it exists; else declare it as Celery does (classic, durable, its own exchange).

    The check is a passive declare on a channel of its own: a missing queue closes that channel (404).
    """
    probe = channel.connection.channel()
    try:
        probe.queue_declare(queue, passive=True)
        probe.close()
        return
    except pika.exceptions.ChannelClosedByBroker as e:
        if e.reply_code != NOT_FOUND:
            raise
    channel.queue_declare(queue, durable=True)
    channel.exchange_declare(queue, "direct", durable=True)
    channel.queue_bind(queue, queue, routing_key=queue)


async def adopt_async(channel: aiormq.abc.AbstractChannel, queue: str) -> None:
    """`adopt_sync` on an aiormq channel."""
    probe = await channel.connection.channel(publisher_confirms=False)
    try:
        await probe.queue_declare(queue, passive=True)
        await probe.close()
        return
    except aiormq.exceptions.ChannelNotFoundEntity:
        pass
    await channel.queue_declare(queue, durable=True)
    await channel.exchange_declare(queue, exchange_type="direct", durable=True)
    await channel.queue_bind(queue, queue, routing_key=queue)


async def declare_for_worker(
    connection: aiormq.abc.AbstractConnection,
    channel: aiormq.abc.AbstractChannel,
    decls: Sequence[Declaration],
    ladder: frozenset[str],
) -> aiormq.abc.AbstractChannel:
    """Declare what a worker child consumes; the delay ladder (`ladder`: its names) only when it is not all there.

    A child used to declare the whole ladder at every start (26 levels: ~110 round trips, most of a
    second). The ladder is declared in order, so its last object (the due routing exchange, declared
    after the levels) existing means a complete earlier declaration: one passive check replaces it; a
    broker whose ladder predates that exchange gets the whole ladder declared once more. The task
    queues, their dead-letter queues and bindings are always declared, so a queue with other
    arguments is still a `TopologyMismatch`. A failed passive check closes the channel: the
    declarations go on on a new one, which is returned.
    """
    # Adapted (and refused, if the broker cannot take them) as a whole before the ladder is declared;
    # declare_async adapts them again, which changes nothing.
    decls = for_server(decls, async_server(channel))
    in_ladder = [d for d in decls if _name(d) in ladder]
    last = next((d for d in reversed(in_ladder) if isinstance(d, QueueDecl | ExchangeDecl)), None)
    if last is not None:
        try:
            if isinstance(last, QueueDecl):
                await channel.queue_declare(last.name, passive=True)
            else:
                await channel.exchange_declare(last.name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            channel = await connection.channel(publisher_confirms=False)
            await declare_async(channel, in_ladder)
    await declare_async(channel, [d for d in decls if _name(d) not in ladder])
    return channel


def _name(decl: Declaration) -> str:
    """The ladder object a declaration creates (a binding belongs to its ladder queue or ladder exchange)."""
    if isinstance(decl, ExchangeDecl | QueueDecl):
        return decl.name
    if isinstance(decl, BindingDecl):
        return decl.queue
    return decl.source  # ExchangeBindingDecl: the level it leaves from
