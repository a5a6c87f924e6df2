"""The AMQP properties of an `Outgoing` message, for aiormq and for pika (docs/protocol.md, "Properties").

The two builders are written out side by side rather than from a shared dict: they run once per
publish, and keyword unpacking would cost half of a builder's time. A unit test checks that both
carry the same values (tests/unit/test_message.py); only the task-name property's name differs
(`message_type` in aiormq, `type` in pika).
"""

from __future__ import annotations

import aiormq
import pika

from rabbittask.message import Outgoing

PERSISTENT = 2  # delivery mode: written to disk (a quorum queue stores every message anyway)


def properties(msg: Outgoing) -> aiormq.spec.Basic.Properties:
    """aiormq properties of `msg`."""
    return aiormq.spec.Basic.Properties(
        content_type=msg.content_type,
        delivery_mode=PERSISTENT,
        message_id=msg.message_id or None,  # "": not a task run (beat's state message)
        correlation_id=msg.correlation_id,
        message_type=msg.task_name,
        priority=msg.priority,
        headers=msg.headers,
        reply_to=msg.reply_to,
        expiration=None if msg.expiration_ms is None else str(msg.expiration_ms),
    )


def pika_properties(msg: Outgoing) -> pika.BasicProperties:
    """pika properties of `msg`: the same values as `properties(msg)`."""
    return pika.BasicProperties(
        content_type=msg.content_type,
        delivery_mode=PERSISTENT,
        message_id=msg.message_id or None,
        correlation_id=msg.correlation_id,
        type=msg.task_name,
        priority=msg.priority,
        headers=msg.headers,
        reply_to=msg.reply_to,
        expiration=None if msg.expiration_ms is None else str(msg.expiration_ms),
    )
