"""A child's side of the control plane: answer broadcasts, follow revocations, say it is alive.

On its own connection (so a control command never waits behind task traffic, and a lost control
connection never costs the consumer its channel), each child:

* binds an exclusive, auto-deleted queue to the `<exchange>.control` fanout exchange and answers
  each command addressed to it over the caller's direct reply-to (`ping`, `active`, `scheduled`,
  `registered`, `stats`, `queues`; `revoke` needs no answer);
* reads the `<exchange>.revoked` stream from the start of the retention window, then follows it,
  into `REVOKED` (control/local.py). To know it has read everything revoked before it started, it
  appends a marker record of its own first and reads until the marker comes back: `caught_up`,
  which the child waits for before it consumes a task;
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
import psutil
from aiormq.abc import DeliveredMessage

from rabbittask.amqp.connect import CONNECTION_ERRORS, connect
from rabbittask.amqp.link import close_quietly
from rabbittask.control.local import REVOKED, RUNS, Run
from rabbittask.control.rates import RATES, parse_rate
from rabbittask.control.wire import Command, Revocation, authentic, reply_body
from rabbittask.errors import AccessRefused, RabbitTaskError
from rabbittask.ops.heartbeat import HEARTBEAT, OFFLINE, Heartbeat
from rabbittask.topology import PRESENCE_AGE_S, control_exchange_name, presence_stream_name, revoked_stream_name
from rabbittask.topology import control_stream_arguments as stream_arguments
from rabbittask.worker.pool import GROW, SHRINK

if TYPE_CHECKING:
    from rabbittask.app import App

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 60.0
CATCH_UP_WARN_S = 10.0  # waiting this long for the revocation stream says so, again each time
CATCH_UP_QUIET_S = 5.0  # marker not back this long, the stream quiet for QUIET_GAP_S: take what was read
CONTROL_DOWN_MAX_S = 60.0  # no control connection this long: take tasks without the revocations made since
QUIET_GAP_S = 1.0
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 5.0  # tasks wait while it is down: try again soon
ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, aiormq.exceptions.AMQPError, RabbitTaskError)


class ControlPlane:
    """The control connection of one worker child; `start()` it, await `caught_up`, `close()` at the end."""

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
        self.caught_up = asyncio.Event()
        self.host, self.pid, self.ppid = socket.gethostname(), os.getpid(), os.getppid()
        self.started_at = time.time()
        self._stats, self._waiting, self._on_stuck, self._on_pool = stats, waiting, on_stuck, on_pool
        self._marker = uuid.uuid4().hex
        self._last_record = time.monotonic()  # when the revocation stream last delivered (or reading began)
        self._reading_since: float | None = None  # when this connection began to read the stream; None: it does not
        self._off = False  # the broker refused the control objects: no revocations to wait for
        self._watch: asyncio.Task[None] | None = None
        self._trouble = ""  # why the control connection failed last, for the catch-up's warning
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
        if self._watch is not None:
            self._watch.cancel()
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
                self.caught_up.set()
                return
            except AccessRefused as e:  # the consuming session says so, and ends the worker if it lasts
                log.debug("control connection refused: %s", e)
            except ERRORS as e:
                if self._closing:
                    return
                self._trouble = f"the control connection failed: {str(e) or type(e).__name__}"
                log.warning("control connection: %s; reconnecting in %.1f s", str(e) or type(e).__name__, backoff_s)
            finally:
                self._publish = None
                self._reading_since = None
                if not (self._closing or self._off) and self.caught_up.is_set():
                    # Revocations made from now on are not read until it is back: tasks wait (`wait_caught_up`).
                    log.warning("control connection lost: tasks wait until the revocations are read again")
                    self.caught_up.clear()
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
            self._last_record = time.monotonic()
            self._on_revocation(message)
            if message.delivery_tag is not None:
                await stream.basic_ack(message.delivery_tag)

        self._marker = uuid.uuid4().hex  # a new one each connection: an earlier one is older than the outage
        self._last_record = time.monotonic()
        await stream.basic_consume(revoked, on_record, arguments={"x-stream-offset": since})
        self._reading_since = time.monotonic()
        # Appended after the read began, in the background: under a memory or disk alarm the broker holds
        # publishes, and `wait_caught_up` then takes the window as read once the stream goes quiet.
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

    async def wait_caught_up(self, stopping: asyncio.Event) -> None:
        """Wait until every revocation of the window is read (or `stopping` is set): only then run tasks.

        Read means: this child's own marker came back through the stream, on its current connection.
        While the control connection is down (at start, or lost later) tasks wait for it, at most
        `CONTROL_DOWN_MAX_S`. When the marker cannot be appended (the broker holds publishes during an
        alarm) or the stream reads slowly (its node restarting after a crash), the window counts as
        read once nothing came for `QUIET_GAP_S` after `CATCH_UP_QUIET_S` of reading. Both are said in
        the log; revocations read later still apply as they arrive.
        """
        if self.caught_up.is_set():
            return
        if self._watch is None or self._watch.done():
            self._watch = asyncio.ensure_future(self._watch_catch_up())
        up, stop = asyncio.ensure_future(self.caught_up.wait()), asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait([up, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            up.cancel()
            stop.cancel()

    async def _watch_catch_up(self) -> None:
        """Until caught up: take the window as read when the stream stays quiet or the connection stays down."""
        started = warned = time.monotonic()
        while not self.caught_up.is_set():
            await asyncio.sleep(0.05)
            now, reading = time.monotonic(), self._reading_since
            if reading is not None and now - max(started, reading) >= CATCH_UP_QUIET_S:
                if now - self._last_record >= QUIET_GAP_S:
                    self._give_up(
                        f"could not all be read within {CATCH_UP_QUIET_S:.0f} s",
                        self._trouble or "its marker did not come back: does the broker hold publishes (an alarm)?",
                    )
            elif reading is None and now - started >= CONTROL_DOWN_MAX_S:
                self._give_up(f"could not be read for {CONTROL_DOWN_MAX_S:.0f} s", self._trouble or "no connection")
            if not self.caught_up.is_set() and now - warned >= CATCH_UP_WARN_S:
                warned = now
                log.warning(
                    "tasks wait until the revocations of the window are read (%s)",
                    "reading" if reading is not None else f"no control connection: {self._trouble or 'connecting'}",
                )

    def _give_up(self, what: str, why: str) -> None:
        log.warning(
            "the revocations of the window %s (%s); taking tasks with the %d read so far: the others apply as they "
            "are read",
            what,
            why,
            len(REVOKED),
        )
        self.caught_up.set()

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
            if not self.caught_up.is_set():
                log.info("read %d revocation(s) of the last %g s", len(REVOKED), self.settings.revoke_retention_s)
                self.caught_up.set()
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
                "rss_bytes": psutil.Process().memory_info().rss,
                "queues": self.queues,
                "revocations": len(REVOKED),
                "rate_limits": {name: str(rate) for name, rate in RATES.limited().items()},
                **self._stats(),
            }
        raise ValueError(f"unknown command {command!r}")
