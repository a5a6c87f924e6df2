"""Unique tasks: `@app.task(unique_for=60)` sends a task once per key within the window, across producers.

On RabbitMQ alone: each key has a classic queue of its own, `<exchange>.unique.<task>.<key hash>`,
holding at most one message (`x-max-length: 1`, `x-overflow: reject-publish`) that expires after
the window (`x-message-ttl`). Before it sends the task, a producer publishes a marker there with
publisher confirms: the broker acks the first and nacks every other while the marker lives, so
exactly one producer sends the task, whichever process it runs in. The queue deletes itself
once unused for the window and a minute more (`x-expires`).

The key is the task name and its arguments (their JSON, hashed), or what `unique_key=` returns
for the call's arguments.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pika
import pika.exceptions

from rabbittask.amqp.blocking import connect
from rabbittask.errors import ConfigError
from rabbittask.message import encode_body
from rabbittask.settings import Settings

UniqueKey = Callable[..., str]
EXPIRES_MARGIN_S = 60.0
MARKER = pika.BasicProperties(delivery_mode=2)


def unique_queue_name(exchange: str, task_name: str, key: str) -> str:
    """The queue that holds the marker of one key (the key hashed: any text fits a queue name)."""
    return f"{exchange}.unique.{task_name}.{hashlib.sha256(key.encode()).hexdigest()[:32]}"


def unique_arguments(window_s: float) -> dict[str, Any]:
    """One message at most, refused (nacked) while it lives, gone after the window."""
    return {
        "x-queue-type": "classic",
        "x-max-length": 1,
        "x-overflow": "reject-publish",  # a second marker is nacked: that producer learns it is a duplicate
        "x-message-ttl": max(1, round(window_s * 1000)),
        "x-expires": round((window_s + EXPIRES_MARGIN_S) * 1000),
    }


def key_of(task_name: str, args: Sequence[Any], kwargs: Mapping[str, Any], unique_key: UniqueKey | None = None) -> str:
    """The key of a call: `unique_key(*args, **kwargs)`, or its arguments as JSON."""
    if unique_key is None:
        return encode_body(tuple(args), dict(kwargs)).decode()
    try:
        key = unique_key(*args, **kwargs)
    except TypeError as e:
        raise ConfigError(f"task {task_name!r}: unique_key does not take the call's arguments ({e})") from None
    if not isinstance(key, str):
        raise ConfigError(f"task {task_name!r}: unique_key must return a str, it returned {type(key).__name__}")
    return key


class Claims:
    """Markers of unique keys, published with confirms on a connection per thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._local = threading.local()

    def claim(self, task_name: str, key: str, window_s: float) -> bool:
        """True if this call holds the key for the window (send the task); False: a duplicate."""
        name = unique_queue_name(self.settings.exchange, task_name, key)
        for attempt in (1, 2):  # a connection found closed is opened again, once
            channel = self._channel()
            try:
                channel.queue_declare(name, durable=True, arguments=unique_arguments(window_s))
                channel.basic_publish("", name, b"", MARKER, mandatory=True)
                return True
            except pika.exceptions.NackError:
                return False
            except pika.exceptions.ChannelClosedByBroker as e:
                self._local.channel = None
                raise ConfigError(
                    f"task {task_name!r}: the unique-key queue {name} exists with other arguments "
                    f"({e.reply_text}); was unique_for changed? It goes away after the old window"
                ) from None
            except pika.exceptions.AMQPConnectionError:
                self._local.channel = None
                if attempt == 2:
                    raise
        raise AssertionError("not reached")

    def _channel(self) -> Any:
        channel = getattr(self._local, "channel", None)
        if channel is None or not channel.is_open:
            connection = connect(self.settings, "unique", "claim a unique key on")
            channel = connection.channel()
            channel.confirm_delivery()
            self._local.connection, self._local.channel = connection, channel
        return channel

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None and connection.is_open:
            connection.close()
