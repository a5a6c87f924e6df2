"""Small pika helpers for tests: queue depth, reading a dead-letter queue, raw publishing, deleting."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pika

from rabbittask.delays import delay_declarations
from rabbittask.topology import ExchangeDecl, QueueDecl, dlx_name, events_exchange_name, service_declarations
from tests.waiting import wait_until


def connect(url: str, name: str = "") -> pika.BlockingConnection:
    params = pika.URLParameters(url)
    if name:
        params.client_properties = {"connection_name": name[:255]}
    return pika.BlockingConnection(params)


def delete(url: str, queues: Iterable[str] = (), exchanges: Iterable[str] = (), *, name: str = "") -> None:
    """Delete `queues`, then `exchanges` (missing ones are fine: delete is idempotent on RabbitMQ)."""
    queues, exchanges = list(queues), list(exchanges)
    if not queues and not exchanges:
        return
    connection = connect(url, name)
    try:
        channel = connection.channel()
        for queue in queues:
            channel.queue_delete(queue)
        for exchange in exchanges:
            channel.exchange_delete(exchange)
    finally:
        connection.close()


def depth(url: str, queue: str) -> int:
    """Messages ready in `queue` (passive declare)."""
    connection = connect(url)
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        connection.close()


def wait_depth(url: str, queue: str, expected: int, timeout_s: float = 15.0) -> None:
    """Wait until `queue` holds `expected` ready messages."""
    wait_until(
        lambda: depth(url, queue) == expected,
        timeout_s,
        lambda: f"queue {queue} holds {depth(url, queue)} messages, expected {expected}",
        interval_s=0.1,
    )


def get_all(url: str, queue: str) -> list[tuple[pika.BasicProperties, bytes]]:
    """Take every message out of `queue` (acked): (properties, body) in order."""
    out = []
    connection = connect(url)
    try:
        channel = connection.channel()
        while True:
            method, props, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((props, body))
    finally:
        connection.close()


def publish_raw(url: str, routing_key: str, body: bytes, exchange: str = "rabbittask", **props: Any) -> None:
    """Publish with plain pika and confirms, as a producer in another language would."""
    connection = connect(url)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            exchange, routing_key, body, pika.BasicProperties(delivery_mode=2, **props), mandatory=True
        )
    finally:
        connection.close()


def delete_ladder(url: str, exchange: str) -> None:
    """Delete an app exchange's delay ladder, its chord join queue, history and control streams, its exchanges,
    its dead-letter, events and control exchanges (queues first)."""
    decls = delay_declarations(exchange, []) + service_declarations(exchange, history=(1, 1), control_retention_s=1)
    queues = [d.name for d in decls if isinstance(d, QueueDecl)] + [f"{exchange}.join"]
    exchanges = [d.name for d in decls if isinstance(d, ExchangeDecl)] + [exchange, dlx_name(exchange)]
    delete(url, queues, [*exchanges, events_exchange_name(exchange)])
