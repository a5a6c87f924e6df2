"""A child's side of the control plane: answer broadcasts, follow revocations, say it is alive.

On its own connection (so a control command never waits behind task traffic, and a lost control
connection never costs the consumer its channel), each child:

* binds an exclusive, auto-deleted queue to the `<exchange>.control` fanout exchange and answers
  each command addressed to it over the caller's direct reply-to (`ping`, `active`, `scheduled`,
  `registered`, `stats`, `queues`; `revoke` needs no answer);
* reads the `<exchange>.revoked` stream from the start of the retention window, then follows it,
  into `REVOKED` (control/local.py). To know it has read everything revoked before it started, it
  appends a marker record of its own first and reads until the marker comes back (`catch_up`,
  catchup.py), which the child waits for before it runs a task, and again after a lost connection;
* applies rate limits set at run time (records of the same stream, control/rates.py);
* appends a heartbeat to the `<exchange>.workers` presence stream every `events_heartbeat_s`, so a
  caller knows who should answer (control/roster.py).

`terminate=True` cancels an async run at once; a sync run gets `grace_s` to reach its next
`ctx.check_revoked()`, then `on_stuck` replaces the child as a hard time limit does.
With `signing_keys` set, unsigned or tampered commands and records are ignored and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiormq
import aiormq.abc
from aiormq.abc import DeliveredMessage

from rabbittask.amqp.connect import CONNECTION_ERRORS, cancelled_here, connect
from rabbittask.amqp.link import close_quietly, close_when_cancelled
from rabbittask.control.local import REVOKED, RUNS, Run
from rabbittask.control.rates import RATES, parse_rate
from rabbittask.control.wire import Command, Revocation, authentic, reply_body
from rabbittask.errors import AccessRefused, RabbitTaskError
from rabbittask.ops.heartbeat import HEARTBEAT, OFFLINE, Heartbeat
from rabbittask.topology import PRESENCE_AGE_S, control_exchange_name, presence_stream_name, revoked_stream_name
from rabbittask.topology import control_stream_arguments as stream_arguments
from rabbittask.worker.catchup import CatchUp
from rabbittask.worker.pool import GROW, SHRINK

if TYPE_CHECKING:
    from rabbittask.app import App

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 60.0
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 2.0  # tasks wait while it is down (catchup.py): try again soon
ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, aiormq.exceptions.AMQPError, RabbitTaskError)
# aiormq cancels pending calls when their connection closes (`cancelled_here`): a lost connection too.
RECONNECT_ERRORS: tuple[type[BaseException], ...] = (*ERRORS, asyncio.CancelledError)


class ControlPlane:
    """The control connection of one worker child; `start()` it, wait on `catch_up`, `close()` at the end."""

    def __init__(
        self,
        app: App,
        queues: list[str],
        *,
        stats: Callable[[], dict[str, Any]],
        waiting: Callable[[], list[DeliveredMessage]],
        on_stuck: Callable[[Run], None],
        on_pool: Callable[[bytes], None] | None = None,
    ) -> None:
        self.app = app
        self.settings = app.settings
        self.queues = queues
        self.catch_up = CatchUp()
        self.host, self.pid, self.ppid = socket.gethostname(), os.getpid(), os.getppid()
        self.started_at = time.time()
        self._stats, self._waiting, self._on_stuck, self._on_pool = stats, waiting, on_stuck, on_pool
        self._marker = uuid.uuid4().hex
        self._off = False  # the broker refused the control objects: no revocations to wait for
        self._background: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._publish: aiormq.abc.AbstractChannel | None = None
        self._closing = False
        REVOKED.window_s = self.settings.revoke_retention_s
        REVOKED.clear()  # a forked child starts from the stream, not from its supervisor's memory

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        """Say this child is offline (best effort) and close the connection."""
        self._closing = True
        if self._publish is not None and not self._publish.is_closed:
            with contextlib.suppress(*ERRORS, TimeoutError):
                await asyncio.wait_for(self._beat(OFFLINE), 1.0)
        self.catch_up.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, *ERRORS):
                await self._task

    async def _run(self) -> None:
        backoff_s = BACKOFF_FIRST_S
        while not self._closing:
            connection: aiormq.abc.AbstractConnection | None = None
            try:
                connection = await connect(self.settings, "worker control")
                await self._setup(connection)
                backoff_s = BACKOFF_FIRST_S
                await self._beat_forever(connection)
            except aiormq.exceptions.ChannelAccessRefused as e:
                # Without configure permission on the control objects this child cannot take commands: it says
                # so and runs its tasks all the same (a revoke then reaches it only through the run-time check).
                log.error(
                    "control plane off for this child: the broker refused to declare its control objects (%s); "
                    "grant configure permission on %s.control, %s.revoked and %s.workers, or set control=False",
                    e,
                    *(self.settings.exchange,) * 3,
                )
                self._off = True
                self.catch_up.done.set()
                return
            except AccessRefused as e:  # the consuming session says so, and ends the worker if it lasts
                log.debug("control connection refused: %s", e)
            except RECONNECT_ERRORS as e:  # before the fix a CancelledError of aiormq's ended the control plane
                if self._closing or cancelled_here(e):
                    return
                self.catch_up.trouble = f"the control connection failed: {str(e) or type(e).__name__}"
                log.warning("control connection: %s; reconnecting in %.1f s", str(e) or type(e).__name__, backoff_s)
            finally:
                self._publish = None
                if not (self._closing or self._off):
                    self.catch_up.lost()
                if connection is not None:
                    await close_quietly(connection, "worker control")
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)

    async def _setup(self, connection: aiormq.abc.AbstractConnection) -> None:
        exchange = self.settings.exchange
        self._publish = publish = await connection.channel(publisher_confirms=True)
        commands = await connection.channel()
        await commands.exchange_declare(control_exchange_name(exchange), exchange_type="fanout", durable=True)
        # Named under the app's exchange (not amq.gen-*), so the app's permissions (docs/operations.md) cover it.
        own = f"{control_exchange_name(exchange)}.{self.host}.{self.pid}.{uuid.uuid4().hex[:8]}"
        ok = await commands.queue_declare(own, exclusive=True, auto_delete=True)
        assert ok.queue is not None
        await commands.queue_bind(ok.queue, control_exchange_name(exchange))
        close_when_cancelled(commands, f"the control queue {own}", connection)
        await commands.basic_consume(ok.queue, self._on_command, no_ack=True)
        await publish.queue_declare(
            presence_stream_name(exchange), durable=True, arguments=stream_arguments(PRESENCE_AGE_S)
        )
        revoked = revoked_stream_name(exchange)
        stream = await connection.channel()
        await stream.queue_declare(revoked, durable=True, arguments=stream_arguments(self.settings.revoke_retention_s))
        await stream.basic_qos(prefetch_count=500)
        since = datetime.fromtimestamp(time.time() - self.settings.revoke_retention_s, UTC)

        async def on_record(message: DeliveredMessage) -> None:
            self.catch_up.record()
            self._on_revocation(message)
            if message.delivery_tag is not None:
                await stream.basic_ack(message.delivery_tag)

        self._marker = uuid.uuid4().hex  # a new one each connection: an earlier one is older than the outage
        close_when_cancelled(stream, f"the revocation stream {revoked}", connection)  # else revocations go unread
        await stream.basic_consume(revoked, on_record, arguments={"x-stream-offset": since})
        self.catch_up.reading()
        # Appended after the read began, in the background: under a memory or disk alarm the broker holds
        # publishes, and the catch-up (catchup.py) then takes the window as read once the stream goes quiet.
        marker = json.dumps({"ids": [], "marker": self._marker, "ts": time.time()}).encode()
        self._spawn(publish.basic_publish(marker, routing_key=revoked))
        self._spawn(self._beat(HEARTBEAT))

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("control publish failed: %s", task.exception())

    async def _beat_forever(self, connection: aiormq.abc.AbstractConnection) -> None:
        next_prune = time.monotonic() + PRUNE_EVERY_S
        while not connection.is_closed:
            await asyncio.sleep(self.settings.events_heartbeat_s)
            await self._beat(HEARTBEAT)
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + PRUNE_EVERY_S
                REVOKED.prune()
        raise ConnectionError("control connection closed")

    async def _beat(self, kind: str) -> None:
        if self._publish is None:
            return
        beat = Heartbeat(
            host=self.host,
            pid=self.pid,
            ppid=self.ppid,
            ts=time.time(),
            app=self.app.name,
            queues=tuple(self.queues),
            interval_s=self.settings.events_heartbeat_s,
            uptime_s=time.time() - self.started_at,
            done=RUNS.done + RUNS.failed,
            failed=RUNS.failed,
        )
        props = aiormq.spec.Basic.Properties(content_type="application/json", message_type=kind)
        await self._publish.basic_publish(
            beat.encode(), routing_key=presence_stream_name(self.settings.exchange), properties=props
        )

    # -- revocations ---------------------------------------------------------------------------------

    def _on_revocation(self, message: DeliveredMessage) -> None:
        try:
            data = json.loads(message.body)
        except ValueError:
            return
        if isinstance(data, dict) and data.get("marker") == self._marker:
            self.catch_up.read(len(REVOKED), self.settings.revoke_retention_s)
            return
        if isinstance(data, dict) and "rate_limit" in data:
            self._rate_limit(message, data)
            return
        if isinstance(data, dict) and not data.get("ids"):
            return  # another child's marker
        self._revoke(message, data)

    def _rate_limit(self, message: DeliveredMessage, data: dict[str, Any]) -> None:
        why = authentic(self.settings, message)
        if why:
            log.warning("ignored a rate limit that is not authentic: %s", why)
            return
        try:
            limit = data["rate_limit"]
            rate = parse_rate(limit["rate"], limit.get("burst")) if limit.get("rate") is not None else None
            RATES.override(str(limit["task"]), rate, float(data.get("ts", 0)))
        except (KeyError, TypeError, ValueError) as e:
            log.warning("ignored a malformed rate limit (%s): %.200r", e, message.body)

    def _revoke(self, message: DeliveredMessage, data: Any) -> None:
        why = authentic(self.settings, message)
        if why:
            log.warning("ignored a revocation that is not authentic: %s", why)
            return
        try:
            record = Revocation.model_validate(data)
        except ValueError:
            log.warning("ignored a malformed revocation: %.200r", message.body)
            return
        for task_id in REVOKED.add(list(record.ids), record.ts, record.terminate):
            if record.terminate:
                self._terminate(task_id)

    def _terminate(self, task_id: str) -> None:
        run = RUNS.active.get(task_id)
        if run is None:
            return
        log.warning("task %s [%s] revoked with terminate=True: stopping it", run.task_name, task_id)
        if run.task is not None:
            run.terminating = True
            run.task.cancel()
        else:
            asyncio.get_running_loop().call_later(self.settings.terminate_grace_s, self._grace_passed, task_id, run)

    def _grace_passed(self, task_id: str, run: Run) -> None:
        if RUNS.active.get(task_id) is not run:
            return  # it checked and stopped, or finished
        log.error(
            "task %s [%s] still runs %g s after it was terminated (it never called ctx.check_revoked()): "
            "dead-lettering it and replacing this child (a thread cannot be stopped)",
            run.task_name,
            task_id,
            self.settings.terminate_grace_s,
        )
        run.abandoned = True
        self._on_stuck(run)

    # -- commands ------------------------------------------------------------------------------------

    async def _on_command(self, message: DeliveredMessage) -> None:
        why = authentic(self.settings, message)
        if why:
            log.warning("ignored a control command that is not authentic: %s", why)
            return
        try:
            command = Command.model_validate_json(message.body)
        except ValueError:
            log.warning("ignored a malformed control command: %.200r", message.body)
            return
        if not command.addressed_to(self.host, (self.pid, self.ppid)):
            return
        if command.command == "revoke":
            self._revoke(message, command.arguments)
            return
        if command.command == "rate_limit":
            self._rate_limit(message, command.arguments)
            return
        props = message.header.properties
        if not props.reply_to:
            return
        try:
            if command.command in ("pool_grow", "pool_shrink"):
                body = reply_body(self.ppid, self._pool(command))
            else:
                body = reply_body(self.ppid, self.answer(command.command))
        except Exception as e:  # noqa: BLE001 - a failing answer is reported to the caller, not a crash
            body = reply_body(self.ppid, error=f"{type(e).__name__}: {e}")
        if self._publish is None:
            return
        reply = aiormq.spec.Basic.Properties(content_type="application/json", correlation_id=props.message_id)
        with contextlib.suppress(*ERRORS):
            await self._publish.basic_publish(json.dumps(body).encode(), routing_key=props.reply_to, properties=reply)

    def _pool(self, command: Command) -> str:
        """Child 1 of each worker passes a pool command to its supervisor; the others only say so."""
        n = command.arguments.get("n", 1)
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"{command.command} takes a whole number of children of 1 or more, not {n!r}")
        if self._on_pool is None:
            return "passed on by child 1 of this worker"
        self._on_pool((GROW if command.command == "pool_grow" else SHRINK) * n)
        return f"{command.command.removeprefix('pool_')} by {n}: passed to the supervisor"

    def answer(self, command: str) -> Any:
        """This child's answer to an inspect command."""
        now = time.time()
        if command == "ping":
            return "pong"
        if command == "active":
            return [run.describe(now) for run in list(RUNS.active.values())]
        if command == "scheduled":
            return [
                {"id": m.header.properties.message_id or "", "name": m.header.properties.message_type or ""}
                for m in self._waiting()
            ]
        if command == "registered":
            return sorted(t.name for t in self.app.tasks.values() if t.queue in self.queues)
        if command == "queues":
            return [{"name": q, "type": self.app.queues[q].queue_type} for q in self.queues if q in self.app.queues]
        if command == "stats":
            return {
                "pid": self.pid,
                "ppid": self.ppid,
                "host": self.host,
                "uptime_s": round(now - self.started_at, 1),
                "done": RUNS.done,
                "failed": RUNS.failed,
                "rss_bytes": _rss_bytes(),
                "queues": self.queues,
                "revocations": len(REVOKED),
                "rate_limits": {name: str(rate) for name, rate in RATES.limited().items()},
                **self._stats(),
            }
        raise ValueError(f"unknown command {command!r}")


def _rss_bytes() -> int:
    import psutil  # only for `inspect stats`: not in every child's start

    return int(psutil.Process().memory_info().rss)
