"""The history stream: a RabbitMQ stream bound to `task.#` (and `beat.#`) of the events exchange.

Workers send their task events once (batched, on the events exchange) and the broker copies them
into `<exchange>.history`, so history costs the hot path nothing more than the events it already
sends. A stream is read without consuming it: every reader (dashboards, `rabbittask events`)
starts where it wants (`x-stream-offset`: the first event kept, a time, or an offset) and
several read it at once. Retention is by age and size (`history_max_age_s`, `history_max_bytes`).
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiormq
import aiormq.abc
import pika.exceptions

from rabbittask.amqp.blocking import connect
from rabbittask.errors import ConfigError
from rabbittask.settings import Settings
from rabbittask.topology import events_exchange_name, explain_precondition, history_arguments, history_stream_name

log = logging.getLogger(__name__)

BINDING = "task.#"  # task events: heartbeats are live state, not history
BEAT_BINDING = "beat.#"  # and beat's ticks (`beat.tick.<schedule>`), so a schedule's last tick survives too
PREFETCH = 1000  # a stream consumer over AMQP 0-9-1 needs a prefetch, and acks to go on
ACK_EVERY = 100
Offset = str | int | datetime.datetime  # "first", "last", "next", an offset, or a time


def arguments(settings: Settings) -> dict[str, Any]:
    """The stream's arguments from `settings`."""
    return history_arguments(settings.history_max_age_s, settings.history_max_bytes)


async def declare(open_channel: Callable[[], Awaitable[aiormq.abc.AbstractChannel]], settings: Settings) -> str | None:
    """Declare the stream and its binding (or check it exists without `declare_topology`).

    On a channel of its own, so a refusal closes nothing else. Returns None, or what went wrong
    (the events exchange and the tasks go on without history).
    """
    name = history_stream_name(settings.exchange)
    channel = await open_channel()
    try:
        if settings.declare_topology:
            exchange = events_exchange_name(settings.exchange)
            await channel.exchange_declare(exchange, exchange_type="topic", durable=True)
            await channel.queue_declare(name, durable=True, arguments=arguments(settings))
            await channel.queue_bind(name, exchange, routing_key=BINDING)
            await channel.queue_bind(name, exchange, routing_key=BEAT_BINDING)
        else:
            await channel.queue_declare(name, passive=True)
    except aiormq.exceptions.ChannelPreconditionFailed as e:
        return f"the history stream {name} exists with other arguments: {explain_precondition(str(e))}"
    except aiormq.exceptions.ChannelNotFoundEntity:
        return f"the history stream {name} does not exist (declare_topology is off: declare it, or set history=False)"
    finally:
        if not channel.is_closed:
            await channel.close()
    return None


def event_time(body: dict[str, Any]) -> float | None:
    """When the events of a message happened: its `ts` (the worker's flush time)."""
    ts = body.get("ts")
    return float(ts) if isinstance(ts, int | float) else None


def read(
    settings: Settings, offset: Offset, idle_s: float = 1.0, follow: bool = False, routing_prefix: str = ""
) -> Iterator[dict[str, Any]]:
    """Event messages of the history stream from `offset`, as `{"routing_key", "offset", **body}`.

    Only those whose routing key starts with `routing_prefix` are decoded. Stops when nothing new
    came for `idle_s` (the end of what is kept), or never with `follow`.
    """
    name = history_stream_name(settings.exchange)
    connection = connect(settings, "history", "read the history stream of")
    try:
        channel = connection.channel()
        try:
            channel.queue_declare(name, passive=True)
        except pika.exceptions.ChannelClosedByBroker as e:
            raise ConfigError(
                f"there is no history stream {name} on the broker: workers create it when history is on "
                "(the default) and they send events"
            ) from e
        channel.basic_qos(prefetch_count=PREFETCH)
        unacked = 0
        for method, properties, body in channel.consume(
            name, arguments={"x-stream-offset": offset}, inactivity_timeout=idle_s
        ):
            if method is None:
                if follow:
                    continue
                break
            unacked += 1
            if unacked >= ACK_EVERY:
                channel.basic_ack(method.delivery_tag, multiple=True)
                unacked = 0
            if not method.routing_key.startswith(routing_prefix):
                continue
            try:
                decoded = json.loads(body)
            except ValueError:
                continue
            if isinstance(decoded, dict):
                headers = properties.headers or {}
                yield {"routing_key": method.routing_key, "offset": headers.get("x-stream-offset"), **decoded}
    finally:
        if connection.is_open:
            connection.close()
