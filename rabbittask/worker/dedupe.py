"""A stage between redelivery and dispatch: run a message at most once per id and attempt within `dedupe_s`.

At-least-once delivery can hand a task two copies of one message: a publisher that sent it again
because the first copy's confirm never came (marked `rt-resent`), or a producer that published one id
twice. A task declared with `@app.task(dedupe_s=300)` runs only the first copy of an (id, attempt)
seen within its window; a later copy is acked unrun (`Reason.DUPLICATE`, counted in events,
heartbeats and metrics). A retry is a new attempt, so it runs.

The claim lives on RabbitMQ, so it holds across children and hosts with no other server: one classic
queue per (id, attempt), `<exchange>.dedupe.<id>.<attempt>`, with `x-max-length=1` and
`x-overflow=reject-publish`. The first claim's marker is confirmed; a later one is nacked, because the
queue is full. `x-expires` deletes the queue once it was left unused for `dedupe_s`. That is two round
trips per message of such a task (declare, confirmed publish) on the worker's publishing connection;
tasks without `dedupe_s` pay nothing. A chord's callback (header `rt-chord-callback`) is claimed the
same way, for `chord_callback_dedupe_s`: a joiner killed between publishing it and acking the records
publishes it again, with the same id, and only one copy runs.

A redelivery (its worker died, or its channel closed) is the same message, not a copy: it is not
claimed again, so a run that was cut off runs again. A claim that cannot be made (broker trouble)
lets the message run: a duplicate is better than a lost task.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import aiormq
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from rabbittask.amqp.connect import CONNECTION_ERRORS
from rabbittask.errors import PublishError
from rabbittask.message import H_RESENT, attempt_of
from rabbittask.topology import Arguments
from rabbittask.worker.outcome import Outcome, Reason
from rabbittask.workflow.wire import H_CHORD_CALLBACK

if TYPE_CHECKING:
    from rabbittask.app import App
    from rabbittask.publish.aio import AsyncPublisher

log = logging.getLogger(__name__)

MAX_ID_CHARS = 120  # queue names stop at 255 bytes: a longer id is claimed by its hash
PERSISTENT = Basic.Properties(delivery_mode=2)  # the claim survives a broker restart within its window
CLAIM_ERRORS: tuple[type[BaseException], ...] = (PublishError, aiormq.exceptions.AMQPError, *CONNECTION_ERRORS)


def dedupe_queue_name(exchange: str, message_id: str, attempt: int) -> str:
    """The queue that holds the claim on one attempt of one message id."""
    if len(message_id) > MAX_ID_CHARS:
        message_id = hashlib.sha256(message_id.encode()).hexdigest()
    return f"{exchange}.dedupe.{message_id}.{attempt}"


class Dedupe:
    """Claims (id, attempt) of messages of `dedupe_s` tasks before they run; acks duplicates unrun."""

    def __init__(self, app: App, publisher: AsyncPublisher, settle: Callable[[Outcome], None]) -> None:
        self.windows = {task.name: task.dedupe_s for task in app.tasks.values() if task.dedupe_s}
        self.callback_window_s = app.settings.chord_callback_dedupe_s
        self.exchange = app.settings.exchange
        self.timeout_s = app.settings.publish_timeout_s
        self._publisher = publisher
        self._settle = settle

    def window(self, message: DeliveredMessage) -> float | None:
        """The dedupe window of `message`: its task's `dedupe_s`, or a chord callback's; None: not claimed."""
        props = message.header.properties
        window_s = self.windows.get(props.message_type or "")
        if window_s is None and props.headers and H_CHORD_CALLBACK in props.headers:
            return self.callback_window_s  # a joiner that died before its acks sends the callback again
        return window_s

    async def admit(self, message: DeliveredMessage) -> bool:
        """False if `message` is a duplicate (then it is settled); True if it may run."""
        props = message.header.properties
        window_s = self.window(message)
        if window_s is None or getattr(message.delivery, "redelivered", False):
            return True
        headers = props.headers or {}
        attempt = attempt_of(headers)
        name = dedupe_queue_name(self.exchange, props.message_id or "", attempt)
        try:
            if await self._claim(name, window_s):
                return True
        except CLAIM_ERRORS as e:
            log.warning(
                "task %s [%s]: could not check for a duplicate (%s); running it",
                props.message_type,
                props.message_id,
                e,
            )
            return True
        log.info(
            "task %s [%s] attempt %d ran already within dedupe_s=%g: acked unrun (a duplicate%s)",
            props.message_type,
            props.message_id,
            attempt,
            window_s,
            ", re-sent by its publisher" if H_RESENT in headers else "",
        )
        self._settle(Outcome(message, props.message_type or "", reason=Reason.DUPLICATE))
        return False

    async def _claim(self, name: str, window_s: float) -> bool:
        channel = await self._publisher.channel()
        arguments: Arguments = {
            "x-queue-type": "classic",
            "x-max-length": 1,
            "x-overflow": "reject-publish",  # the second claim is nacked: that is how a duplicate shows
            "x-expires": max(1, round(window_s * 1000)),
        }
        await channel.queue_declare(name, durable=True, arguments=arguments)
        try:
            confirm = await channel.basic_publish(
                b"", exchange="", routing_key=name, properties=PERSISTENT, mandatory=True, timeout=self.timeout_s
            )
        except aiormq.exceptions.DeliveryError:  # nacked: the queue is full, another copy claimed it
            return False
        return isinstance(confirm, Basic.Ack)
