"""The beat process: wait to become the one active scheduler, then fire due ticks with confirms.

Election. Every replica keeps one connection to the broker and tries, every `poll_s`, to declare
the app's lock queue as *exclusive*. The broker lets one connection hold it and deletes it the
moment that connection closes (a crash, a kill -9, a lost network: the broker drops the socket,
at the latest after two missed heartbeats), so the next replica's declare succeeds.

Fencing. The lock, the ticks and the state share that one connection. A publish can only be
confirmed through a connection the broker still holds open, and while it holds it open no other
replica can hold the lock: every confirmed tick was sent by the scheduler that was active then.

State and the crash window. Per entry the broker-held state says up to when every slot was
handled. For each slot the active scheduler publishes the tick and waits for its confirm, *then*
writes the new state and waits for that confirm. A crash between the two confirms (about one
round trip per tick) makes the next scheduler send that slot again, with the same message id
(`<entry>@<slot>`), so a task can recognise the duplicate; no order of events skips a slot. The
other order (state first) would turn the same crash into a lost tick. AMQP transactions do not
close the window either: on RabbitMQ 3.10 a `tx.commit` is acknowledged even when a quorum queue
refused the message (`x-overflow=reject-publish`), where a publisher confirm reports the nack.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import aiormq
import aiormq.abc
from pamqp.commands import Basic

from rabbittask.amqp.connect import CONNECTION_ERRORS
from rabbittask.amqp.link import Link
from rabbittask.amqp.properties import properties
from rabbittask.beat.entry import ScheduleEntry
from rabbittask.beat.plan import due
from rabbittask.beat.state import (
    State,
    decode_state,
    encode_state,
    lock_queue_name,
    merge,
    slot_text,
    state_declaration,
    state_queue_name,
    tick_id,
    time_text,
)
from rabbittask.errors import ConfigError, ConnectionLost, PublishError, PublishNotConfirmed
from rabbittask.message import H_EXPIRES, H_FIRED_AT, H_SCHEDULE, H_SLOT, Outgoing, publish_target
from rabbittask.publish.declare import declare_async
from rabbittask.settings import mask_url
from rabbittask.topology import Declaration, events_exchange_name

if TYPE_CHECKING:
    from rabbittask.app import App

log = logging.getLogger(__name__)

Clock = Callable[[], float]
"""Returns the current time as epoch seconds (`time.time`); tests pass a frozen or fast clock."""

BROKER_ERRORS: tuple[type[Exception], ...] = (
    ConnectionLost,
    PublishError,
    aiormq.exceptions.AMQPError,
    *CONNECTION_ERRORS,
)
STATE_TYPE = "rabbittask.beat.state"  # the `type` of the state message
TICK_EVENT = "beat.tick"  # routing key prefix of the event of a tick sent, on `<exchange>.events`
EVENT_PROPERTIES = aiormq.spec.Basic.Properties(content_type="application/json", delivery_mode=1)
MAX_STATE_MESSAGES = 10  # the state queue holds one; read a few more in case a write raced a read


class Beat:
    """Runs the schedules of `app`: one replica is active at a time, the others wait to take over."""

    def __init__(
        self,
        app: App,
        *,
        clock: Clock = time.time,
        poll_s: float = 1.0,
        heartbeat_s: int = 2,
        max_sleep_s: float = 1.0,
        identity: str | None = None,
    ) -> None:
        if not app.schedules:
            raise ConfigError(f"app {app.name!r} has no schedules: declare them with app.schedule(...)")
        self.app = app
        self.entries = list(app.schedules.values())
        self.clock = clock
        self.poll_s = poll_s
        self.max_sleep_s = max_sleep_s
        self.identity = identity or f"{socket.gethostname()}:{os.getpid()}"
        # A short heartbeat: the broker notices a silently dead scheduler (and frees its lock) sooner.
        self.settings = app.settings.model_copy(update={"heartbeat_s": heartbeat_s})
        self.lock_queue = lock_queue_name(app.settings.exchange, app.name)
        self.state_queue = state_queue_name(app.settings.exchange, app.name)
        self.done_until: dict[str, float] = {}
        self.active = False
        self.ticks_sent = 0
        # The lock, the ticks and the state share this one connection (see "Fencing" above).
        self._link = Link(self.settings, f"beat {app.name} {self.identity}")
        self._channel: aiormq.abc.AbstractChannel | None = None  # confirms: ticks and state
        self._events: aiormq.abc.AbstractChannel | None = None  # no confirms: `beat.tick` events, best-effort
        self._stop = asyncio.Event()

    def __repr__(self) -> str:
        return f"<Beat {self.app.name} {self.identity} {'active' if self.active else 'standby'}>"

    # -- lifecycle -----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Wait for the lock, lead while holding it, wait again after losing it; until `stop()`."""
        log.info(
            "beat %s: %d schedule(s); standing by until this replica holds the lock queue %s",
            self.identity,
            len(self.entries),
            self.lock_queue,
        )
        backoff_s = 0.5
        try:
            while not self._stop.is_set():
                try:
                    if await self.acquire():
                        backoff_s = 0.5
                        await self.lead()
                    else:
                        await self._sleep(self.poll_s)
                except BROKER_ERRORS as e:
                    if self._stop.is_set():
                        break
                    reason = mask_url(str(e) or type(e).__name__)
                    if self.active:
                        log.warning("no longer the active scheduler: %s", reason)
                    else:
                        log.warning("broker connection lost (%s); retrying in %.1f s", reason, backoff_s)
                    await self.close()
                    await self._sleep(backoff_s)
                    backoff_s = min(backoff_s * 2, 10.0)
        finally:
            await self.close()
        log.info("beat %s stopped after sending %d tick(s)", self.identity, self.ticks_sent)

    def stop(self) -> None:
        """Ask `run()` to return; the lock is released when the connection closes."""
        self._stop.set()

    async def close(self) -> None:
        """Close the connection: the broker deletes the lock queue and another replica can take over."""
        self.active = False
        self._channel = self._events = None
        await self._link.close()

    async def _sleep(self, seconds: float) -> None:
        waits: list[asyncio.Future[object]] = [asyncio.ensure_future(self._stop.wait())]
        if self._channel is not None:
            waits.append(self._channel.closing)
        try:
            await asyncio.wait(waits, timeout=max(0.0, seconds), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waits[0].cancel()

    # -- election ------------------------------------------------------------------------------------

    async def acquire(self) -> bool:
        """Try once to become the active scheduler; True if this replica is it (now or already)."""
        if self.active:
            return True
        connection = await self._link.connect()
        probe = await connection.channel(publisher_confirms=False)
        try:
            await probe.queue_declare(self.lock_queue, exclusive=True)
        except aiormq.exceptions.ChannelLockedResource:
            return False  # another replica holds it; the broker closed the probe channel
        # From here on the lock is ours for as long as this connection lives.
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await declare_async(channel, self.declarations())
        self._channel, self._events = channel, await self._events_channel(probe)
        state = await self._read_state(channel)
        now = self.clock()
        self.done_until = dict(state.done_until)
        new = [e.name for e in self.entries if e.name not in self.done_until]
        for name in new:  # a new entry starts now: nothing before its first sight is "missed"
            self.done_until[name] = now
        if new:
            await self._write_state(now)
        self.active = True
        since = (
            f"the last state was written {now - state.at:.3f} s earlier by {state.by}"
            if state.at is not None
            else "no earlier state"
        )
        log.info("beat %s is the active scheduler at=%.3f (%s)", self.identity, time.time(), since)
        return True

    def declarations(self) -> list[Declaration]:
        """What beat needs on the broker: the queues its ticks go to, and the state queue."""
        queues = sorted({e.queue for e in self.entries})
        decls = self.app.declarations(queues)
        decls.append(state_declaration(self.app.settings.exchange, self.app.name))
        return decls

    async def _read_state(self, channel: aiormq.abc.AbstractChannel) -> State:
        states: list[State] = []
        last_tag = None
        for _ in range(MAX_STATE_MESSAGES):
            message = await channel.basic_get(self.state_queue, no_ack=False)
            if not isinstance(message.delivery, Basic.GetOk):
                break
            last_tag = message.delivery.delivery_tag
            try:
                states.append(decode_state(message.body))
            except ValueError as e:
                log.warning("ignoring a message in %s that is not a beat state: %s", self.state_queue, e)
        if last_tag is not None:  # read, not taken: the state stays until the next write replaces it
            await channel.basic_nack(last_tag, multiple=True, requeue=True)
        return merge(states)

    # -- leading -------------------------------------------------------------------------------------

    async def lead(self) -> None:
        """Fire ticks until stopped; raise `ConnectionLost` when the lock (the connection) is gone."""
        while not self._stop.is_set():
            wait_s = await self.step()
            await self._sleep(min(wait_s, self.max_sleep_s))
            if self._channel is None or self._channel.is_closed:
                raise ConnectionLost("the connection holding the scheduler lock closed")

    async def step(self) -> float:
        """Fire every tick due now; return the seconds until the next slot of any entry."""
        now = self.clock()
        for entry in self.entries:
            plan = due(entry, self.done_until[entry.name], now)
            if plan.skipped:
                log.warning(
                    "schedule %s: %d%s missed tick(s) older than %.0f s not sent (catch_up=%s)",
                    entry.name,
                    plan.skipped,
                    "+" if plan.skipped_more else "",
                    entry.grace_s,
                    entry.catch_up,
                )
            for slot in plan.fire:
                if not await self._send_tick(entry, slot, now):
                    break  # not advanced: the next step sends the slot again
                self.done_until[entry.name] = slot
                await self._write_state(now)
                await self._announce(entry, slot, now)
            else:
                if plan.done_until is not None and plan.done_until > self.done_until[entry.name]:
                    self.done_until[entry.name] = plan.done_until
                    await self._write_state(now)
        later = min(e.next_after(max(now, self.done_until[e.name])) for e in self.entries)
        return max(0.0, later - self.clock())

    async def _send_tick(self, entry: ScheduleEntry, slot: float, now: float) -> bool:
        """Publish one tick and wait for its confirm; False (logged) if the broker refused it."""
        task = self.app.get_task(entry.task_name)
        headers = {H_SCHEDULE: entry.name, H_SLOT: slot_text(slot), H_FIRED_AT: time_text(now)}
        if entry.expires_s is not None:
            headers[H_EXPIRES] = time_text(now + entry.expires_s)
        msg = task.message(
            entry.args, entry.kwargs, queue=entry.queue, headers=headers, message_id=tick_id(entry.name, slot)
        )
        if entry.expires_s is not None:
            # The broker drops (dead-letters, reason `expired`) a tick no worker took in time.
            msg.expiration_ms = max(1, round(entry.expires_s * 1000))
        refused = await self._publish(msg)
        if refused:
            log.error(
                "tick %s of schedule %s to queue %r was not confirmed (%s); sending it again",
                msg.message_id,
                entry.name,
                msg.routing_key,
                refused,
            )
            return False
        self.ticks_sent += 1
        log.info("tick %s -> task %s (queue %s)", msg.message_id, entry.task_name, msg.routing_key)
        return True

    async def _events_channel(self, probe: aiormq.abc.AbstractChannel) -> aiormq.abc.AbstractChannel | None:
        """The probe channel, for `beat.tick` events, once the events exchange exists (declared as workers do)."""
        settings = self.app.settings
        if not settings.events:
            return None
        try:
            exchange = events_exchange_name(settings.exchange)
            await probe.exchange_declare(
                exchange, exchange_type="topic", durable=True, passive=not settings.declare_topology
            )
        except aiormq.exceptions.AMQPError as e:
            log.info("not sending beat.tick events: %s", e)
            return None
        return probe

    async def _announce(self, entry: ScheduleEntry, slot: float, now: float) -> None:
        """Publish a `beat.tick.<entry>` event (the dashboard's last tick), best-effort, without confirm.

        On a channel of its own: an events exchange that does not exist closes that channel only.
        """
        channel = self._events
        if channel is None or channel.is_closed:
            return
        body = {"schedule": entry.name, "task": entry.task_name, "id": tick_id(entry.name, slot), "slot": slot}
        try:
            await channel.basic_publish(
                json.dumps({**body, "ts": now, "by": self.identity}).encode(),
                exchange=events_exchange_name(self.app.settings.exchange),
                routing_key=f"{TICK_EVENT}.{entry.name}",
                properties=EVENT_PROPERTIES,
            )
        except BROKER_ERRORS as e:
            log.debug("beat.tick event of %s not sent: %s", entry.name, e)

    async def _write_state(self, now: float) -> None:
        """Replace the state on the broker and wait for the confirm (`PublishNotConfirmed` if refused)."""
        state = Outgoing(
            self.state_queue, encode_state(self.done_until, self.identity, now), "", STATE_TYPE, exchange=""
        )
        refused = await self._publish(state)
        if refused:
            # Sending more ticks without recorded state would make the next scheduler repeat them.
            raise PublishNotConfirmed(f"the scheduler state was not confirmed by the broker: {refused}")

    async def _publish(self, msg: Outgoing) -> str:
        """Publish on the lock's connection and wait for the confirm; '' if confirmed, else why not."""
        assert self._channel is not None
        exchange, routing_key = publish_target(msg, self.app.settings.exchange)
        try:
            confirm = await self._channel.basic_publish(
                msg.body,
                exchange=exchange,
                routing_key=routing_key,
                properties=properties(msg),
                mandatory=True,
                timeout=self.settings.publish_timeout_s,
            )
        except aiormq.exceptions.PublishError:
            return "returned: no queue bound to the routing key"
        except aiormq.exceptions.DeliveryError:
            return "nacked: the queue refused it (full or unavailable)"
        except TimeoutError:
            # A lock holder that cannot get a confirm may have lost the lock already: step down.
            raise ConnectionLost(
                f"no confirm within {self.settings.publish_timeout_s:g} s; the connection holding the lock looks dead"
            ) from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this scheduler is being cancelled
            # aiormq cancels pending confirms when it finds its connection dead (no frames received).
            raise ConnectionLost("the connection holding the lock died while waiting for a confirm") from None
        if isinstance(confirm, Basic.Nack):
            return "nacked: the queue refused it (full or unavailable)"
        return ""
