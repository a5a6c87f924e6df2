"""Task events and heartbeats of a worker child, published best-effort to the `<exchange>.events` topic exchange.

Cheap enough to leave on: a settled task costs one `list.append` (of its `Outcome`); once a second,
or every `BATCH` tasks, the list is grouped by routing key and sent as one JSON message per key
on a channel of the child's publishing connection, without confirms. `received` and `started`
events are off by default (`events_received`, `events_started`): each costs one more append of a
`(message, time)` tuple per task, to a deque the sync task threads may append to as well. Events never block or fail
task processing: while a send is still under way (a memory alarm blocks publishing connections)
they pile up to `MAX_PENDING` and older ones are dropped; a broken channel is reopened later.

Routing keys: `task.<state>.<task name>` (state: received, started, succeeded, failed, retried, duplicate,
dead-lettered) and `worker.heartbeat` / `worker.offline`. Bodies (docs/events.md is the reference):

    task.*:  {"host", "pid", "ts", "events": [{"id", "task", "state", ...}]}
    worker.*: a `Heartbeat` (ops/heartbeat.py, the schema `status` and the dashboard read too)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import aiormq
import aiormq.abc
from aiormq.abc import DeliveredMessage
from pydantic_core import to_json

from rabbittask.history import stream as history
from rabbittask.history.argsrepr import H_ARGSREPR
from rabbittask.ops.heartbeat import HEARTBEAT, OFFLINE, Heartbeat
from rabbittask.progress import H_PROGRESS, Reply
from rabbittask.progress import reply_body as progress_reply_body
from rabbittask.publish.aio import AsyncPublisher
from rabbittask.settings import Settings
from rabbittask.topology import events_exchange_name
from rabbittask.worker.outcome import MESSAGE_CHARS, Outcome, Settlement
from rabbittask.workflow.wire import H_WORKFLOW

if TYPE_CHECKING:
    from rabbittask.worker.metrics import TaskMetrics

log = logging.getLogger(__name__)

BATCH = 500  # events per flush at most; a drain at 20,000 msg/s sends 40 small messages a second
FLUSH_S = 1.0
MAX_PENDING = 20 * BATCH  # events kept while a send is stuck; older ones are dropped beyond it
RETRY_CHANNEL_S = 5.0  # after a failed send, how long events are dropped before a new channel is tried
SEND_TIMEOUT_S = 2.0
PROPERTIES = aiormq.spec.Basic.Properties(content_type="application/json", delivery_mode=1)
EVENT_TRACEBACK_CHARS = 2000  # the end of a failed task's traceback: where it raised
Succeeded = tuple[str, str, float, object, object]  # (id, task, runtime_s, argsrepr, workflow headers) of a success
MessageLog = deque[tuple[DeliveredMessage, float]]  # (message, time.time()) of received or started tasks


def state_of(outcome: Outcome) -> str | None:
    """The state of a settled task: succeeded, retried, failed (it ran and raised), dead-lettered (never ran).

    None for a message that was only put back to wait (not due yet). A failed task is dead-lettered
    too: it gets both events, but counts (metrics, heartbeats) under `failed` alone. Each `Reason`
    knows its state.
    """
    reason = outcome.reason
    return "succeeded" if reason is None else reason.event_state


def task_events(outcomes: Sequence[Outcome]) -> dict[str, list[dict[str, Any]]]:
    """Events of `outcomes` grouped by routing key."""
    groups = succeeded_events(
        [
            (o.message_id, o.task_name, o.runtime_s, argsrepr_of(o.message), workflow_of(o.message))
            for o in outcomes
            if o.reason is None
        ]
    )
    for o in outcomes:
        if o.reason is None:
            continue
        state = state_of(o)
        if state is None:
            continue
        event: dict[str, Any] = {"id": o.message_id, "task": o.task_name, "state": state, "runtime_s": o.runtime_s}
        event["reason"], event["exc_type"] = o.reason.value, o.exc_type
        event["exc_message"] = o.exc_message[:MESSAGE_CHARS]
        args, workflow = argsrepr_of(o.message), workflow_of(o.message)
        if args is not None:
            event["args"] = args
        if workflow is not None:
            event["workflow"] = workflow
        if state == "failed":
            event["traceback"] = o.traceback[-EVENT_TRACEBACK_CHARS:]
        elif state == "retried" and o.republish is not None:
            event["retry_in_s"] = round(o.republish.delay_s, 3)
        if o.reason.settlement is Settlement.DEAD_LETTER:  # failed ones end in the DLQ as well
            dead = {**event, "state": "dead-lettered"}
            dead.pop("traceback", None)
            groups.setdefault(f"task.dead-lettered.{o.task_name}", []).append(dead)
            if state == "dead-lettered":
                continue
        groups.setdefault(f"task.{state}.{o.task_name}", []).append(event)
    return groups


def succeeded_events(succeeded: Sequence[Succeeded]) -> dict[str, list[dict[str, Any]]]:
    """Events of succeeded tasks, recorded as (message id, task name, runtime), grouped by routing key."""
    groups: dict[str, list[dict[str, Any]]] = {}
    by_task: dict[str, list[dict[str, Any]]] = {}
    for message_id, name, runtime_s, args, workflow in succeeded:
        events = by_task.get(name)
        if events is None:
            events = by_task[name] = groups.setdefault(f"task.succeeded.{name}", [])
        event = {"id": message_id, "task": name, "state": "succeeded", "runtime_s": runtime_s}
        if isinstance(args, str):
            event["args"] = args
        if isinstance(workflow, str):
            event["workflow"] = workflow
        events.append(event)
    return groups


def argsrepr_of(message: DeliveredMessage) -> str | None:
    """The arguments as the producer wrote them for the history (`rt-argsrepr`), if it did."""
    headers = message.header.properties.headers
    value = headers.get(H_ARGSREPR) if headers else None
    return value if isinstance(value, str) else None


def workflow_of(message: DeliveredMessage) -> str | None:
    """The id of the workflow (chain, group, chord) the message belongs to (`rt-workflow`), if it does."""
    headers = message.header.properties.headers
    value = headers.get(H_WORKFLOW) if headers else None
    return value if isinstance(value, str) else None


def started_events(state: str, log: MessageLog) -> dict[str, list[dict[str, Any]]]:
    """`received` or `started` events of what `log` holds (emptied), grouped by routing key."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for _ in range(len(log)):  # threads may append meanwhile: take what was there
        message, ts = log.popleft()
        props = message.header.properties
        name = props.message_type or ""
        event = {"id": props.message_id or "?", "task": name, "state": state, "ts": ts}
        args, workflow = argsrepr_of(message), workflow_of(message)
        if args is not None:
            event["args"] = args
        if workflow is not None:
            event["workflow"] = workflow
        groups.setdefault(f"task.{state}.{name}", []).append(event)
    return groups


class Events:
    """Collects a child's settled tasks and sends them, and its heartbeats, on a side channel."""

    def __init__(
        self,
        settings: Settings,
        publisher: AsyncPublisher,
        app_name: str,
        queues: Sequence[str],
        stats: Callable[[], dict[str, Any]],
        *,
        publish: bool = True,
        metrics: TaskMetrics | None = None,
    ) -> None:
        self.buffer: list[Outcome] = []  # settled tasks other than succeeded ones (few)
        # Succeeded tasks as (message id, task name, runtime): nothing of the message is kept alive until
        # the flush, so a drain's messages are freed as soon as they are acked (hot memory, no cache misses).
        self.succeeded: list[Succeeded] = []
        self.settings = settings
        self.exchange = events_exchange_name(settings.exchange)
        self.done = self.failed = self.retried = self.dead_lettered = self.duplicates = self.dropped = 0
        self.received: MessageLog | None = deque(maxlen=MAX_PENDING) if publish and settings.events_received else None
        self.started: MessageLog | None = deque(maxlen=MAX_PENDING) if publish and settings.events_started else None
        self.progressed: deque[tuple[dict[str, Any], Reply | None]] = deque(maxlen=MAX_PENDING)  # ctx.progress()
        self._publisher = publisher
        self._publish = publish
        self._metrics = metrics
        self._stats = stats
        self._identity = {"host": socket.gethostname(), "pid": os.getpid(), "ppid": os.getppid()}
        self._static = {"app": app_name, "queues": list(queues), "interval_s": settings.events_heartbeat_s}
        self._started = time.monotonic()
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._sending: asyncio.Task[None] | None = None
        self._broken_until = 0.0
        self._runner: asyncio.Task[None] | None = None
        self._history_declared = False

    def record(self, outcome: Outcome) -> None:
        """The per-task cost: an append (and, every `BATCH` tasks, a flush)."""
        if outcome.reason is None:
            buffer: list[Any] = self.succeeded
            props = outcome.message.header.properties
            headers = props.headers
            # Raw header values (checked to be text when the events are built, off the hot path).
            args, workflow = (headers.get(H_ARGSREPR), headers.get(H_WORKFLOW)) if headers else (None, None)
            buffer.append((props.message_id or "?", outcome.task_name, outcome.runtime_s, args, workflow))
        else:
            buffer = self.buffer
            buffer.append(outcome)
        if len(buffer) >= BATCH:
            self.flush()

    def progress(self, update: dict[str, Any], reply: Reply | None) -> None:
        """A task's `ctx.progress()` (from any thread): sent at the next flush, the latest of each task only."""
        self.progressed.append((update, reply))

    def start(self) -> None:
        """Flush once a second and send a heartbeat every `events_heartbeat_s`, until `close()`.

        The events channel is opened (and the history stream declared) now, not at the first flush:
        creating a stream takes the broker a moment, better spent before the first task than during it.
        """
        if self._publish:
            self._sending = asyncio.ensure_future(self._send([]))
        self._runner = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        """Send what is left and a `worker.offline` message, waiting at most `SEND_TIMEOUT_S`."""
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        self.flush()
        if not self._publish:
            return
        if self._sending is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._sending), SEND_TIMEOUT_S)
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(self._send([(OFFLINE, self.heartbeat())]), SEND_TIMEOUT_S)

    async def _run(self) -> None:
        next_beat = 0.0
        while True:
            now = time.monotonic()
            beat = now >= next_beat
            if beat:
                next_beat = now + self.settings.events_heartbeat_s
            self.flush(heartbeat=beat and self._publish)
            if self._metrics is not None:
                self._metrics.sample(self._stats())
            await asyncio.sleep(min(FLUSH_S, self.settings.events_heartbeat_s))

    def heartbeat(self) -> dict[str, Any]:
        """The body of a heartbeat (a `Heartbeat`): who this child is and what it did so far."""
        beat = {
            **self._identity,
            **self._static,
            "ts": time.time(),
            "uptime_s": round(time.monotonic() - self._started, 3),
            "failed": self.failed,
            "retried": self.retried,
            "dead_lettered": self.dead_lettered,
            "duplicates": self.duplicates,
            "dropped": self.dropped,
            **self._stats(),
        }
        return Heartbeat.model_validate(beat).body()

    def flush(self, *, heartbeat: bool = False) -> None:
        """Start sending the buffered events (and a heartbeat), unless a send is under way.

        Meanwhile events are kept, up to `MAX_PENDING`, and a heartbeat is skipped.
        """
        buffer, succeeded = self.buffer, self.succeeded
        if (
            not buffer
            and not succeeded
            and not heartbeat
            and not self.received
            and not self.started
            and not self.progressed
        ):
            return
        if (self._sending is not None and not self._sending.done()) or time.monotonic() < self._broken_until:
            for pending in (buffer, succeeded):
                if len(pending) > MAX_PENDING:
                    self.dropped += len(pending) - MAX_PENDING
                    del pending[:-MAX_PENDING]
            return
        self.buffer, self.succeeded = [], []
        if self._metrics is not None:
            self._metrics.observe(buffer, succeeded)
        if not self._publish:
            return
        groups: dict[str, list[dict[str, Any]]] = {}
        for state, log in (("received", self.received), ("started", self.started)):
            if log:
                groups.update(started_events(state, log))
        for key, events in succeeded_events(succeeded).items():
            groups.setdefault(key, []).extend(events)
        settled = task_events(buffer)
        for key, events in settled.items():
            groups.setdefault(key, []).extend(events)
        self._count(settled)
        replies = self._progress(groups)
        now = time.time()
        messages = [(key, {**self._identity, "ts": now, "events": events}) for key, events in groups.items()]
        if heartbeat:
            messages.append((HEARTBEAT, self.heartbeat()))
        self._sending = asyncio.ensure_future(self._send(messages, replies))

    def _count(self, settled: dict[str, list[dict[str, Any]]]) -> None:
        for events in settled.values():
            for e in events:
                state = e["state"]
                if state == "failed":
                    self.failed += 1
                elif state == "retried":
                    self.retried += 1
                elif state == "dead-lettered":
                    self.dead_lettered += 1
                elif state == "duplicate":
                    self.duplicates += 1

    def _progress(self, groups: dict[str, list[dict[str, Any]]]) -> list[tuple[Reply, bytes]]:
        """The latest progress of each task since the last flush, into `groups`; and the replies to callers."""
        latest: dict[str, tuple[dict[str, Any], Reply | None]] = {}
        for _ in range(len(self.progressed)):  # task threads may append meanwhile: take what was there
            update, reply = self.progressed.popleft()
            latest[update["id"]] = (update, reply)
        replies = []
        for update, reply in latest.values():
            if self._publish:
                groups.setdefault(f"task.progress.{update['task']}", []).append(update)
            if reply is not None:
                replies.append((reply, progress_reply_body(update)))
        return replies

    async def _send(
        self, messages: list[tuple[str, dict[str, Any]]], replies: Sequence[tuple[Reply, bytes]] = ()
    ) -> None:
        try:
            channel = self._channel
            if channel is None or channel.is_closed:
                channel = await asyncio.wait_for(self._open(), SEND_TIMEOUT_S)
            for (reply_to, correlation_id), reply in replies:  # to `.call(on_progress=...)` callers: first, they wait
                properties = aiormq.spec.Basic.Properties(
                    content_type="application/json", correlation_id=correlation_id, headers={H_PROGRESS: 1}
                )
                await channel.basic_publish(reply, exchange="", routing_key=reply_to, properties=properties)
            for routing_key, body in messages:
                await channel.basic_publish(
                    to_json(body),
                    exchange=self.exchange,
                    routing_key=routing_key,
                    properties=PROPERTIES,
                )
        except (Exception, asyncio.CancelledError) as e:  # noqa: BLE001 - events must never fail a task
            current = asyncio.current_task()
            if isinstance(e, asyncio.CancelledError) and current is not None and current.cancelling():
                raise
            self._channel = None
            self._broken_until = time.monotonic() + RETRY_CHANNEL_S
            self.dropped += sum(len(b.get("events", ())) for _, b in messages)
            log.debug("events not sent (%s); retrying in %.0f s", e, RETRY_CHANNEL_S)

    async def _open(self) -> aiormq.abc.AbstractChannel:
        channel = await self._publisher.side_channel()
        if self.settings.declare_topology:
            await channel.exchange_declare(self.exchange, exchange_type="topic", durable=True)
        if self.settings.history and not self._history_declared:
            self._history_declared = True  # once per child: a refusal is logged once, events go on without it
            try:
                problem = await history.declare(self._publisher.side_channel, self.settings)
            except Exception as e:  # noqa: BLE001 - the events go on without the history
                problem = f"declaring the history stream failed ({type(e).__name__}: {e})"
            if problem is not None:
                log.warning("task history is not kept: %s", problem)
        self._channel = channel
        return channel
