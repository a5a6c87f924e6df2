"""The joiner: a worker child's stage that joins chords on the broker, with no result backend.

Every child consumes the join queue (`<exchange>.join`, quorum, single active consumer), so one joiner
at a time is active and the next takes over when it dies. The active one holds the records unacked
while it counts (join.py): once a chord's start record and every member's record are in, it publishes
the callback (id `<chord>:callback`) or, when a member failed for good and failures are not allowed,
`on_error` (id `<chord>:on_error`), confirmed; then a `done` record (so late copies are dropped); then
it acks the chord's records. A joiner killed at any moment leaves the records to its successor, which
rebuilds the state from them: nothing is lost, and a repeated callback carries the same id (the worker
that runs it claims the id first, so it runs once).

Memory is bounded: at `join_prefetch` records held, the joiner publishes one partial record per chord
(confirmed) and acks the records it replaces; it does the same with a chord whose records it held for
`join_hold_s`, so a slow chord never reaches the broker's `consumer_timeout`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import aiormq
import aiormq.abc
from pydantic_core import from_json

from rabbittask.amqp.connect import connect
from rabbittask.errors import AccessRefused, ConnectionLost, PayloadError, PublishNotConfirmed, RabbitTaskError
from rabbittask.message import Outgoing
from rabbittask.results.record import encode_failure, encode_success
from rabbittask.settings import mask_url
from rabbittask.worker.acks import Acker, delivery_tag
from rabbittask.workflow import wire
from rabbittask.workflow.join import Chord, JoinState

if TYPE_CHECKING:
    from rabbittask.app import App
    from rabbittask.publish.aio import AsyncPublisher
    from rabbittask.worker.retirement import Lifecycle

log = logging.getLogger(__name__)

BACKOFF_MAX_S = 30.0
POLL_S = 1.0  # how often an idle joiner looks at its channel and the lifecycle


class Joiner:
    """Consumes the join queue while the child runs (see the module docstring)."""

    def __init__(self, app: App, publisher: AsyncPublisher, lifecycle: Lifecycle) -> None:
        self.app = app
        self.publisher = publisher
        self.lifecycle = lifecycle
        self.queue = wire.join_queue_name(app.settings.exchange, app.settings.join_queue)
        self.prefetch = app.settings.join_prefetch
        self.completed = 0  # chords this joiner completed (for logs and tests)
        self.progress: dict[str, tuple[int, int]] = {}  # chord id -> (members reported, size): for heartbeats

    async def run(self) -> None:
        """Join until the child stops; reconnect with back-off when the broker goes away."""
        backoff_s = 0.5
        while self.lifecycle.running:
            try:
                await self._session()
                backoff_s = 0.5
            except Exception as e:  # noqa: BLE001 - broker trouble, a refused declare: never the child's end
                if not self.lifecycle.running:
                    return
                if isinstance(e, AccessRefused):  # the consuming session says so, and ends the worker if it lasts
                    log.debug("chord joiner: %s", e)
                else:
                    log.warning(
                        "chord joiner: %s; reconnecting in %.1f s", mask_url(str(e) or type(e).__name__), backoff_s
                    )
                try:
                    await asyncio.wait_for(self.lifecycle.stopping.wait(), backoff_s)
                except TimeoutError:
                    pass
                backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)

    async def _session(self) -> None:
        connection = await connect(self.app.settings, "joiner")
        try:
            channel = await connection.channel(publisher_confirms=False)
            if self.app.settings.declare_topology:
                await channel.queue_declare(self.queue, durable=True, arguments=wire.join_queue_arguments())
            else:  # applied by an admin (`rabbittask topology apply`): the worker needs no configure permission
                await channel.queue_declare(self.queue, passive=True)
            await channel.basic_qos(prefetch_count=self.prefetch)
            inbox: asyncio.Queue[aiormq.abc.DeliveredMessage] = asyncio.Queue()

            async def deliver(message: aiormq.abc.DeliveredMessage) -> None:
                inbox.put_nowait(message)

            await channel.basic_consume(self.queue, deliver)
            acker = Acker(channel, self.prefetch)
            state = JoinState()  # what the held records say; a new session starts from their redelivery
            self.progress.clear()
            active = False
            last_check = time.monotonic()
            while self.lifecycle.running:
                if channel.is_closed:
                    raise ConnectionLost("the joiner's channel closed")
                try:
                    message = await asyncio.wait_for(inbox.get(), POLL_S)
                except TimeoutError:
                    await self._release_old(state, acker)
                    continue
                if not active:  # the broker made this joiner the single active consumer
                    active = True
                    log.info("chord joiner active on %s (pid %d)", self.queue, os.getpid())
                acker.delivered(delivery_tag(message))
                await self._handle(message, state, acker)
                if time.monotonic() - last_check > POLL_S:
                    last_check = time.monotonic()
                    await self._release_old(state, acker)
            await acker.drain()
        finally:
            if not connection.is_closed:
                await connection.close()

    async def _handle(self, message: aiormq.abc.DeliveredMessage, state: JoinState, acker: Acker) -> None:
        tag = delivery_tag(message)
        record = _read(message.body)
        if record is None:
            log.warning("chord joiner: dropped a record that is not a join record: %r", message.body[:200])
            acker.ack(tag)
            return
        chord_id = str(record["chord"])
        if record.get("kind") == "done" or state.is_done(chord_id):
            for held in state.forget(state.chords.get(chord_id) or Chord(chord_id), done=True):
                acker.ack(held)  # late copies of a completed chord's records
            acker.ack(tag)
            return
        try:
            chord = state.add(record, tag, message.header.properties.reply_to)
        except (KeyError, TypeError, ValueError) as e:
            log.warning(
                "chord joiner: dropped a malformed record of chord %s (%s): %r", chord_id, e, message.body[:200]
            )
            acker.ack(tag)
            return
        if chord.start is not None:  # the most reported so far (a compaction forgets, the partial returns)
            known = self.progress.get(chord.id, (0, 0))[0]
            self.progress[chord.id] = (max(known, len(chord.members)), int(chord.start.get("size", 0)))
        if chord.complete:
            await self._finish(chord)
            self.progress.pop(chord.id, None)
            for held in state.forget(chord, done=True):
                acker.ack(held)
        elif state.held >= self.prefetch:
            await self._compact(state, acker)

    def running(self, limit: int = 50) -> list[tuple[str, int, int]]:
        """Chords being joined: (id, members reported, members in all), the most complete first."""
        rows = sorted(self.progress.items(), key=lambda kv: -kv[1][0])[:limit]
        return [(chord_id, done, total) for chord_id, (done, total) in rows]

    async def _finish(self, chord: Chord) -> None:
        """Publish what a complete chord leads to, confirmed, then its `done` record."""
        assert chord.start is not None
        start = chord.start
        for msg in self._outcome(chord, start):
            await self._publish(msg)
        await self._publish(wire.record_message(self.queue, {"kind": "done", "chord": chord.id}, f"{chord.id}:done"))
        self.completed += 1

    def _outcome(self, chord: Chord, start: dict[str, Any]) -> list[Outgoing]:
        failures = chord.failures()
        reply_to = start.get("reply_to")
        correlation_id = start.get("correlation_id") or chord.id
        if not failures or start.get("allow_failures"):
            callback = start.get("callback")
            try:
                if callback:
                    log.info("chord %s: all %d members settled; sending its callback", chord.id, len(chord.members))
                    return [self._step(chord, callback, chord.results(), reply_to, correlation_id)]
                if reply_to:  # group(...).call(): the results go straight to the caller
                    body = encode_success("group", chord.results())
                    return [_reply(chord.id, reply_to, correlation_id, body)]
                return []
            except PayloadError as e:
                failures = [wire.failure_entry(chord.id, -1, "results too large", "PayloadError", str(e))]
            except RabbitTaskError as e:  # e.g. a callback option this worker's app cannot honour
                failures = [wire.failure_entry(chord.id, -1, "callback not sent", type(e).__name__, str(e))]
        log.warning(
            "chord %s failed: %d member(s) failed for good (first: %s); %s",
            chord.id,
            len(failures),
            failures[0]["reason"],
            "sending on_error" if start.get("on_error") else "no on_error given",
        )
        out: list[Outgoing] = []
        on_error = start.get("on_error")
        if on_error:
            try:
                out.append(self._step(chord, on_error, failures, None, None))
            except RabbitTaskError as e:  # never a poison record: the chord ends, said in the log (and the reply)
                log.error("chord %s: its on_error could not be sent: %s", chord.id, e)
        if reply_to:
            text = f"chord {chord.id}: {len(failures)} member(s) failed for good: " + "; ".join(
                f"{f['id']} ({f['reason']}: {f['exc_type']} {f['message']})".strip() for f in failures[:5]
            )
            body = encode_failure("chord", "ChordFailed", text, "", "chord failed")
            out.append(_reply(chord.id, reply_to, correlation_id, body))
        return out

    def _step(
        self, chord: Chord, steps: list[dict[str, Any]], value: Any, reply_to: str | None, correlation_id: str | None
    ) -> Outgoing:
        flow = wire.Flow(list(steps[1:]))
        msg = wire.step_message(
            self.app, steps[0], [value], flow, chord.id, reply_to=reply_to, correlation_id=correlation_id
        )
        msg.headers = {**(msg.headers or {}), wire.H_CHORD_CALLBACK: chord.id}
        return msg

    async def _release_old(self, state: JoinState, acker: Acker) -> None:
        """Compact chords whose records were held `join_hold_s`: the broker's `consumer_timeout` (30 min by
        default) closes a channel that holds a message unacked too long, so a slow chord must let go."""
        old = state.held_since(time.monotonic() - self.app.settings.join_hold_s)
        if old:
            log.info(
                "chord joiner: %d chord(s) held records for %g s; compacting them",
                len(old),
                self.app.settings.join_hold_s,
            )
            await self._compact(state, acker, old)

    async def _compact(self, state: JoinState, acker: Acker, chords: list[Chord] | None = None) -> None:
        """Replace the held records by one partial per chord (confirmed), ack them, forget those chords."""
        if chords is None:
            chords = state.to_compact()
            log.info("chord joiner: compacting %d held record(s) of %d chord(s)", state.held, len(chords))
        for chord in chords:
            await self._publish(wire.record_message(self.queue, chord.partial(), f"{chord.id}:partial"))
            for held in state.forget(chord):
                acker.ack(held)

    async def _publish(self, msg: Outgoing) -> None:
        try:
            await self.publisher.publish(msg, alarm_wait_s=self.app.settings.alarm_wait_s)
        except PublishNotConfirmed:
            if msg.exchange == "" and not msg.mandatory:  # a reply to a caller that is gone
                return
            raise


def _read(body: bytes) -> dict[str, Any] | None:
    try:
        record = from_json(body)
    except ValueError:
        return None
    if not isinstance(record, dict) or "chord" not in record or record.get("kind") not in wire.RECORD_KINDS:
        return None
    return record


def _reply(chord_id: str, reply_to: str, correlation_id: str, body: bytes) -> Outgoing:
    return Outgoing(
        routing_key=reply_to,
        body=body,
        message_id=chord_id,
        task_name="chord",
        correlation_id=correlation_id,
        exchange="",
        mandatory=False,  # RabbitMQ 3.x returns direct replies as unroutable although it delivered them
    )
