"""The consume loop a worker child runs: one connection, per-consumer prefetch, late acks.

Sync tasks run in worker threads fed by a queue, so heartbeats and acks keep flowing while a
task runs for minutes; async tasks run on the event loop, at most `prefetch` at a time. The loop
reconnects with back-off when the connection drops and never acks a tag from an older channel.
Publishing (dead letters, replies) goes over a second connection, because a memory alarm blocks
a publishing connection and would stop its acks too. With a result backend, a task's result is
stored before its message is acked, so an acked task never lacks its result.

A child retires (stops consuming, finishes and acks what it holds, returns) after `max_tasks`
deliveries or above `max_memory_bytes`, and after a sync task passed its hard time limit (its
thread cannot be stopped, so the child dead-letters the message and hands the rest back). The
supervisor hears of it through `on_retire` and starts the successor before this child is done.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import aiormq
import aiormq.abc
from aiormq.abc import DeliveredMessage

from rabbittask.errors import (
    AccessRefused,
    ConnectionLost,
    PublishError,
    PublishNotConfirmed,
    SoftTimeLimitExceeded,
    TopologyMismatch,
)
from rabbittask.message import H_ATTEMPT, H_ETA, H_EXPIRES
from rabbittask.publish.aio import CONNECTION_ERRORS, AsyncPublisher, access_refused, connect
from rabbittask.publish.declare import declare_async
from rabbittask.publish.outgoing import Outgoing
from rabbittask.results.record import ResultNotSerialisable, encode_failure, encode_success
from rabbittask.retry import schedule_headers
from rabbittask.settings import mask_url
from rabbittask.topology import dlx_name
from rabbittask.worker.acks import Acker, delivery_tag
from rabbittask.worker.admit import admit
from rabbittask.worker.events import Events, MessageLog
from rabbittask.worker.execute import (
    REASON_NOT_SERIALISABLE,
    REASON_RETRY,
    Outcome,
    prepare,
    run_async,
    run_sync,
    soft_limit_outcome,
    source_queue,
    time_limit_outcome,
)
from rabbittask.worker.exits import EXIT_CONFIG, EXIT_OK
from rabbittask.worker.inline import InlinePolicy
from rabbittask.worker.limits import MemoryLimit, ThreadLimits
from rabbittask.worker.metrics import TaskMetrics
from rabbittask.worker.orphans import Orphans
from rabbittask.worker.running import RunningMarkers

if TYPE_CHECKING:
    from rabbittask.app import App
    from rabbittask.task import Task

log = logging.getLogger(__name__)

LIMITS_TICK_S = 0.1  # how often time limits of sync tasks are checked (their precision)
INLINE_MAX_S = 0.001  # sync tasks whose runs all finish within this run on the event loop (see inline.py)
BUDGET_IDLE_S = 0.2  # at its max-tasks budget with nothing to do: how long to wait for more before retiring
RECONNECT_ERRORS: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    ConnectionLost,
    PublishError,
    aiormq.exceptions.AMQPError,
    asyncio.CancelledError,  # aiormq cancels its reader when heartbeats stop
)
ACCESS_ATTEMPTS = 3  # connections tried before a refused login or permission ends the worker
STALE = "stale delivery"  # not run: its channel closed before it started
PUBLISH_ERRORS: tuple[type[Exception], ...] = (PublishError, *CONNECTION_ERRORS)


class Child:
    """Consumes `queues` of `app` until stopped; `run()` returns the process exit code."""

    def __init__(
        self,
        app: App,
        queues: Sequence[str],
        *,
        prefetch: int | None = None,
        threads: int = 1,
        shutdown_timeout_s: float = 30.0,
        max_tasks: int = 0,
        max_memory_bytes: int = 0,
        on_ready: Callable[[], None] | None = None,
        on_retire: Callable[[str], None] | None = None,
        on_consuming: Callable[[bool], None] | None = None,
        metrics: bool = False,
        inline_max_s: float = INLINE_MAX_S,
        running_markers: RunningMarkers | None = None,
    ) -> None:
        unknown = [q for q in queues if q not in app.queues]
        if unknown:
            known = ", ".join(sorted(app.queues)) or "(none)"
            raise TopologyMismatch(f"app {app.name!r} has no task on queue(s) {', '.join(unknown)}; known: {known}")
        self.app = app
        self.queues = list(queues) or sorted(app.queues)
        self.prefetch = prefetch or app.settings.prefetch
        self.threads = threads
        self.shutdown_timeout_s = shutdown_timeout_s
        self.max_tasks = max_tasks
        self.on_ready = on_ready
        self.on_retire = on_retire
        self.on_consuming = on_consuming
        self.metrics = metrics
        self.stop_signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)
        self.tasks_done = 0
        self.received = 0
        self.reconnects = 0
        self._retire_at = max_tasks or -1
        self._acks_left = sys.maxsize  # acks this channel may send before the broker could exceed max_tasks
        self._retiring: str | None = None
        self._shutdown = asyncio.Event()  # warm shutdown: hand back what has not started, bounded wait
        self._signalled = False
        self._memory = MemoryLimit(max_memory_bytes) if max_memory_bytes else None
        limited = any(
            t.time_limit is not None or t.soft_time_limit is not None
            for t in app.tasks.values()
            if t.queue in self.queues and not t.is_async
        )
        self._limits = ThreadLimits() if limited else None
        self._jobs: queue.SimpleQueue[DeliveredMessage | None] = queue.SimpleQueue()
        self._threaded = 0  # messages handed to the task threads whose outcome has not come back yet
        self._thread_idle = asyncio.Event()
        self._inline = InlinePolicy(inline_max_s) if threads == 1 and inline_max_s > 0 else None
        self._results: deque[Outcome] = deque()
        self._wake_pending = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._stop = asyncio.Event()
        self._stopping = False
        self._acker: Acker | None = None
        self._publisher: AsyncPublisher | None = None
        self._events: Events | None = None
        self._received_log: MessageLog | None = None  # (message, time) per task, for `received` events when on
        self._started_log: MessageLog | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._backend = app.backend  # loaded now: a bad result_backend URL stops the worker at start
        # Redelivered messages admitted to run, by id: marked as running while they do (see running.py).
        self._markers = running_markers
        self._marked: set[str] = set()
        # What each task thread runs now, and runs that outlived their channel (see orphans.py).
        self._running: list[DeliveredMessage | None] = [None] * threads
        self._orphans = Orphans()

    # -- lifecycle -----------------------------------------------------------------------------------

    async def run(self) -> int:
        """Consume until a stop is requested; reconnect with back-off when the broker goes away."""
        self._loop = asyncio.get_running_loop()
        self._idle.set()
        for sig in self.stop_signals:
            self._loop.add_signal_handler(sig, self.stop)
        if self._limits is not None:
            self._loop.call_later(LIMITS_TICK_S, self._check_time_limits)
        workers = [
            threading.Thread(target=self._thread_main, args=(i,), name=f"rabbittask-task-{i}", daemon=True)
            for i in range(self.threads)
        ]
        for t in workers:
            t.start()
        # The consuming session declares the topology; the publisher need not repeat it (a first retry
        # or dead letter would wait for a hundred declarations).
        self._publisher = AsyncPublisher(self.app.settings, (), role="worker-publish")
        metrics = TaskMetrics() if self.metrics else None
        if metrics is not None:
            self._publisher.on_confirm = metrics.publish_confirm.observe
        if self.app.settings.events or metrics is not None:
            self._events = Events(
                self.app.settings,
                self._publisher,
                self.app.name,
                self.queues,
                self._stats,
                publish=self.app.settings.events,
                metrics=metrics,
            )
            self._events.start()
            self._received_log, self._started_log = self._events.received, self._events.started
        try:
            code = await self._consume_until_stopped()
        finally:
            for _ in workers:
                self._jobs.put(None)
            if self._events is not None:
                await self._events.close()
            await self._publisher.close()
            if self._backend is not None:
                await self._backend.aclose()
        if code == EXIT_OK:
            log.info("worker stopped after %d task(s)", self.tasks_done)
        return code

    async def _consume_until_stopped(self) -> int:
        """Run sessions until a stop; back off on connection loss, give up on configuration errors."""
        backoff_s = 0.5
        refusals = 0
        while not self._stopping:
            try:
                await self._session()
                backoff_s = 0.5
            except TopologyMismatch as e:
                log.error("%s", e)
                return EXIT_CONFIG
            except AccessRefused as e:
                # A refused login or permission is a configuration error, not an outage: retry a
                # few times (a user being created right now), then exit so nobody loops on it.
                refusals += 1
                if refusals >= ACCESS_ATTEMPTS or self._stopping:
                    log.error("%s; giving up after %d attempt(s) (exit status %d)", e, refusals, EXIT_CONFIG)
                    return EXIT_CONFIG
                log.error("%s; attempt %d of %d, retrying in %.1f s", e, refusals, ACCESS_ATTEMPTS, backoff_s)
                await self._pause(backoff_s)
                backoff_s = min(backoff_s * 2, 30.0)
            except RECONNECT_ERRORS as e:
                refusals = 0
                self.reconnects += 1
                current = asyncio.current_task()
                if isinstance(e, asyncio.CancelledError) and current is not None and current.cancelling():
                    raise  # we are being cancelled; aiormq's internal cancellations are connection losses
                if self._stopping:
                    break
                _explain_consumer_timeout(e)
                log.warning(
                    "broker connection lost (%s); reconnecting in %.1f s",
                    mask_url(str(e) or type(e).__name__),
                    backoff_s,
                )
                await self._pause(backoff_s)
                backoff_s = min(backoff_s * 2, 30.0)
        return EXIT_OK

    async def _pause(self, seconds: float) -> None:
        """Sleep `seconds`, or less if a stop is requested meanwhile."""
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            pass

    def stop(self) -> None:
        """Warm shutdown: stop consuming, hand back what has not started, finish what runs, ack, exit."""
        if self._signalled:
            log.warning("second stop signal: cold shutdown, unfinished tasks go back to the queue")
            os._exit(1)
        log.info("warm shutdown: finishing running tasks (at most %.0f s)", self.shutdown_timeout_s)
        self._signalled = True
        self._stopping = True
        self._shutdown.set()
        self._stop.set()

    def retire(self, reason: str, *, hand_back: bool = False) -> None:
        """Stop consuming, finish and ack what it holds (or hand back what has not started), then return."""
        if self._retiring is not None or self._signalled:
            if hand_back:
                self._shutdown.set()
            return
        log.info("retiring (%s) after %d task(s); its successor is starting", reason, self.tasks_done)
        self._retiring = reason
        if self._acker is not None:
            self._acker.hold()  # until the consumer is cancelled: an ack now could bring one more message
        if self.on_retire is not None:
            self.on_retire(reason)
        self._stopping = True
        if hand_back:
            self._shutdown.set()
        self._stop.set()

    async def _session(self) -> None:
        connection = await connect(self.app.settings, f"worker q={','.join(self.queues)}")
        try:
            channel = await connection.channel(publisher_confirms=False)
            try:
                if self.app.settings.declare_topology:
                    await declare_async(channel, self.app.declarations(self.queues))
                else:  # pre-applied by an admin: the worker needs no configure permission
                    await check_queues(channel, self.queues)
                prefetch = self.prefetch
                if self.max_tasks:
                    # The broker sends at most prefetch + (acks so far) messages: once that reaches the budget, the
                    # consumer is cancelled before the next ack goes out. So a retiring child holds no more than it
                    # will run, and never hands a message back (quorum queues count every return).
                    budget = max(1, self.max_tasks - self.received)
                    prefetch = min(prefetch, budget)
                    self._acks_left = budget - prefetch
                await channel.basic_qos(prefetch_count=prefetch)  # per consumer, never global
                self._acker = Acker(channel, prefetch)
                tags: list[str] = []
                for q in self.queues:
                    ok = await channel.basic_consume(q, self._on_message)
                    tags.append(ok.consumer_tag or "")
            except aiormq.exceptions.ChannelAccessRefused as e:
                raise access_refused(self.app.settings, e, f"declare or consume {', '.join(self.queues)}") from None
            log.info("consuming from %s (prefetch %d, %d thread(s))", ", ".join(self.queues), prefetch, self.threads)
            if self.on_ready is not None:
                self.on_ready()
                self.on_ready = None
            if self.on_consuming is not None:
                self.on_consuming(True)
            stop = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait([stop, channel.closing], return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if self._stopping and not channel.is_closed:
                await self._drain(channel, tags)
            elif channel.is_closed or channel.closing.done():
                raise ConnectionLost(f"channel closed: {_close_reason(channel.closing)}")
        finally:
            self._acker = None
            if self.on_consuming is not None:
                self.on_consuming(False)
            if not connection.is_closed:
                await connection.close()

    async def _drain(self, channel: aiormq.abc.AbstractChannel, consumer_tags: list[str]) -> None:
        for tag in consumer_tags:
            await channel.basic_cancel(tag)
        await asyncio.sleep(0)  # deliveries that came before the cancel-ok run their callbacks first
        acker = self._acker
        assert acker is not None
        acker.release()  # acks held back until the broker stopped sending
        if not self._shutdown.is_set():  # retiring: finish all it holds, unless a stop signal comes
            idle = asyncio.ensure_future(self._idle.wait())
            shutdown = asyncio.ensure_future(self._shutdown.wait())
            await asyncio.wait([idle, shutdown], return_when=asyncio.FIRST_COMPLETED)
            idle.cancel()
            shutdown.cancel()
        handed_back = 0
        while True:  # prefetched messages that have not started go straight back to the queue
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                acker.reject(delivery_tag(job), requeue=True)
                self._in_flight -= 1
                self._thread_done()
                handed_back += 1
        if handed_back:
            log.info("handed %d unstarted message(s) back to the queue", handed_back)
        if self._in_flight <= 0:
            self._idle.set()
        try:
            await asyncio.wait_for(self._idle.wait(), self.shutdown_timeout_s)
        except TimeoutError:
            log.warning(
                "%d task(s) still running after %.0f s; they go back to the queue",
                self._in_flight,
                self.shutdown_timeout_s,
            )
        await acker.drain()

    # -- deliveries ----------------------------------------------------------------------------------

    async def _on_message(self, message: DeliveredMessage) -> None:
        acker = self._acker
        if acker is None:
            return  # not acked: the broker requeues it when the channel closes
        acker.delivered(delivery_tag(message))
        if self._shutdown.is_set():  # came before the cancel-ok: hand it back at once
            acker.reject(delivery_tag(message), requeue=True)
            return
        self._in_flight += 1
        self._idle.clear()
        self.received += 1
        if self._received_log is not None:
            self._received_log.append((message, time.time()))
        if self.received == self._retire_at:
            self.retire(f"--max-tasks-per-child {self.max_tasks} reached")
        props = message.header.properties
        headers = props.headers
        # Expired, not due yet, or delivered too often: settle it unrun (see admit.py). Inline, as
        # the whole cost on the hot path: a flag and, on messages with headers, two dict lookups.
        redelivered = message.delivery.redelivered  # type: ignore[union-attr]
        if (redelivered or (headers and (H_EXPIRES in headers or H_ETA in headers))) and not self._admit(
            message, redelivered
        ):
            return
        task = self.app.tasks.get(props.message_type or "")
        if task is None or not task.is_async:
            inline = self._inline
            if inline is not None and task is not None and inline.inline(task):
                await self._run_inline(inline, task, message)
            else:
                self._to_thread(message)
            return
        if self._started_log is not None:
            self._started_log.append((message, time.time()))
        prepared = prepare(self.app, message)
        if isinstance(prepared, Outcome):
            outcome = prepared
        else:
            marked = self._mark_running(message) if self._marked else None
            outcome = await run_async(*prepared, message)
            if marked is not None:
                self._run_ended(marked)
        self._settle(outcome)

    def _admit(self, message: DeliveredMessage, redelivered: bool) -> bool:
        """False if `message` was settled unrun, or waits for a run of it here (admit.py, orphans.py)."""
        if redelivered and self._rerun_of_own(message):
            return False
        message_id = message.header.properties.message_id or ""
        held = admit(self.app, message, markers=self._markers)
        if held is not None:
            if self._markers is not None:
                self._markers.done(message_id)
            self._settle(held)
            return False
        if redelivered and self._markers is not None:
            self._marked.add(message_id)
        return True

    def _mark_running(self, message: DeliveredMessage) -> str | None:
        """Before a redelivered message runs: its marker; the id to pass to `_run_ended`, or None."""
        message_id = message.header.properties.message_id or ""
        if message_id in self._marked and self._markers is not None:
            self._markers.start(message_id)
            return message_id
        return None

    def _run_ended(self, message_id: str) -> None:
        # At the end of the run, not at its settling: a child killed between the two (acks are
        # coalesced) did not die running this message, which then comes back and runs once more.
        if self._markers is not None:
            self._markers.done(message_id)

    def _unmark(self, message: DeliveredMessage) -> None:
        message_id = message.header.properties.message_id or ""
        if message_id in self._marked and self._markers is not None:
            self._marked.discard(message_id)
            self._markers.done(message_id)

    def _rerun_of_own(self, message: DeliveredMessage) -> bool:
        """True if `message` redelivers a run here whose channel closed: settled with its outcome, not rerun."""
        message_id = message.header.properties.message_id
        if not message_id:
            return False
        outcome = self._orphans.outcome_for(message)
        if outcome is not None:
            log.info(
                "task %s [%s] came back after it finished here: acking it with that run's outcome",
                outcome.task_name,
                message_id,
            )
            self._settle(outcome)
            return True
        unsettled = [o.message for o in list(self._results) if o.reason is not STALE]
        for running in (*self._running, *unsettled):
            if (
                running is not None
                and running.channel is not message.channel
                and running.header.properties.message_id == message_id
            ):
                log.info(
                    "task %s [%s] came back while it still runs here: not running it twice",
                    running.header.properties.message_type,
                    message_id,
                )
                self._orphans.wait(message)
                return True
        return False

    def _to_thread(self, message: DeliveredMessage) -> None:
        self._threaded += 1
        self._thread_idle.clear()
        self._jobs.put(message)

    def _thread_done(self) -> None:
        self._threaded -= 1
        if self._threaded <= 0:
            self._thread_idle.set()

    async def _run_inline(self, inline: InlinePolicy, task: Task[Any, Any], message: DeliveredMessage) -> None:
        while self._threaded > 0:  # sync tasks run one at a time, in order: the thread's work goes first
            await self._thread_idle.wait()
        await inline.turn()
        if self._shutdown.is_set():  # a warm shutdown began while it waited: hand it back unrun
            acker = self._acker
            if acker is not None and message.channel is acker.channel and acker.alive:
                acker.reject(delivery_tag(message), requeue=True)
            self._in_flight -= 1
            if self._in_flight <= 0:
                self._idle.set()
            return
        if self._threaded > 0 or not inline.inline(task):  # changed while it waited
            self._to_thread(message)
            return
        if message.channel.is_closed:  # the broker already requeued it: running it now only duplicates
            self._settle(Outcome(message, "", reason=STALE))
            return
        if self._started_log is not None:
            self._started_log.append((message, time.time()))
        marked = self._mark_running(message) if self._marked else None
        loop = self._loop
        start = time.perf_counter()
        asyncio.events._set_running_loop(None)  # as in a thread: asyncio.run() works inside the task
        try:
            outcome = run_sync(self.app, message)
        finally:
            asyncio.events._set_running_loop(loop)
        if marked is not None:
            self._run_ended(marked)
        elapsed_s = time.perf_counter() - start
        inline.spent(elapsed_s)
        inline.observe(task, elapsed_s)
        self._settle(outcome)

    def _thread_main(self, slot: int) -> None:
        limits = self._limits
        running = self._running
        while (message := self._jobs.get()) is not None:
            if self._started_log is not None and not message.channel.is_closed:
                self._started_log.append((message, time.time()))
            if message.channel.is_closed:  # the broker already requeued it: running it now only duplicates
                outcome: Outcome | None = Outcome(message, "", reason=STALE)
            else:
                # _marked is empty unless redeliveries run: a marker is written before they start
                marked = self._mark_running(message) if self._marked else None
                running[slot] = message
                outcome = run_sync(self.app, message) if limits is None else self._run_limited(limits, message)
                running[slot] = None
                if marked is not None:
                    self._run_ended(marked)
            if outcome is None:
                continue  # abandoned at its hard time limit: the event loop settled it
            self._results.append(outcome)
            if not self._wake_pending:
                self._wake_pending = True
                assert self._loop is not None
                try:
                    self._loop.call_soon_threadsafe(self._collect)
                except RuntimeError:  # the loop is closed: the process is exiting
                    return

    def _run_limited(self, limits: ThreadLimits, message: DeliveredMessage) -> Outcome | None:
        task = self.app.tasks.get(message.header.properties.message_type or "")
        entry = limits.start(task, message) if task is not None else None
        if entry is None:
            return run_sync(self.app, message)
        outcome: Outcome | None = None
        while True:
            try:
                if outcome is None:
                    outcome = run_sync(self.app, message)
                return None if limits.finish(entry) else outcome
            except SoftTimeLimitExceeded:  # raised after the task returned, before finish(): sent once only
                if outcome is None:
                    outcome = soft_limit_outcome(message, entry.task, entry.task.soft_time_limit or 0.0)

    def _check_time_limits(self) -> None:
        assert self._limits is not None and self._loop is not None
        for entry in self._limits.check(time.monotonic()):
            log.error(
                "task %s [%s] still runs at its time_limit of %g s: dead-lettering it and replacing this child "
                "(a thread cannot be stopped)",
                entry.task.name,
                entry.message.header.properties.message_id,
                entry.task.time_limit,
            )
            self._thread_done()  # its thread is abandoned: the loop settles the message
            self._settle(time_limit_outcome(entry.message, entry.task, entry.task.time_limit or 0.0))
            self.retire("a sync task passed its time limit", hand_back=True)
        self._loop.call_later(LIMITS_TICK_S, self._check_time_limits)

    def _collect(self) -> None:
        self._wake_pending = False
        results, inline, tasks = self._results, self._inline, self.app.tasks
        while results:
            outcome = results.popleft()
            self._thread_done()
            if inline is not None and (task := tasks.get(outcome.task_name)) is not None:
                inline.observe(task, outcome.runtime_s)
            self._settle(outcome)

    def _stats(self) -> dict[str, Any]:
        """What a heartbeat says of this child's work."""
        consuming = self._acker is not None and self._acker.alive and not self._stopping
        return {
            "done": self.tasks_done,
            "in_flight": self._in_flight,
            "consuming": consuming,
            "reconnects": self.reconnects,
        }

    def _settle(self, outcome: Outcome) -> None:
        events = self._events
        if events is not None and outcome.reason is not STALE:
            events.record(outcome)
        self._in_flight -= 1
        self.tasks_done += 1
        self._acks_left -= 1
        if self._acks_left < 0 or self._memory is not None:
            self._check_limits()
        acker = self._acker
        message = outcome.message
        if self._marked:
            self._unmark(message)
        if outcome.reason is STALE:
            pass
        elif acker is None or message.channel is not acker.channel or not acker.alive:
            redelivery = self._orphans.finished(outcome) if message.header.properties.message_id else None
            if redelivery is None:
                log.info(
                    "task %s [%s] finished after its channel closed; the broker redelivers it",
                    outcome.task_name,
                    outcome.message_id,
                )
            else:
                self._settle(redelivery)  # its redelivery waited for this run: settled on the new channel
        elif (
            outcome.ok
            and not message.header.properties.reply_to
            and (self._backend is None or not self._stores(outcome))
        ):
            acker.ack(delivery_tag(message))
        else:
            self._in_flight += 1  # until the reply or dead letter is confirmed and the message acked
            self._spawn(self._publish_then_ack(acker, outcome))
        if self._in_flight <= 0:
            self._idle.set()

    def _check_limits(self) -> None:
        """After a task: retire above the memory limit; at the max-tasks budget, hold acks and retire when done."""
        if self._stopping:
            return
        acker = self._acker
        if self._memory is not None and (rss := self._memory.exceeded()):
            limit_mb = self._memory.max_bytes / 2**20
            self.retire(f"RSS {rss / 2**20:.0f} MB above --max-memory-per-child {limit_mb:g} MB")
        elif self._acks_left < 0:
            # One more ack and the broker could send more than max_tasks: hold acks. The broker still sends
            # up to the budget; the child retires at the last one (`_on_message`), or now if nothing else came.
            if acker is not None:
                acker.hold()
            if self._in_flight <= 0 and self._loop is not None:  # wait for deliveries still on the wire
                self._loop.call_later(BUDGET_IDLE_S, self._retire_if_idle)

    def _retire_if_idle(self) -> None:
        if not self._stopping and self._in_flight <= 0:
            self.retire(f"--max-tasks-per-child {self.max_tasks}: no more messages came within its budget")

    def _stores(self, outcome: Outcome) -> bool:
        """True when the outcome goes to the result backend (the app has one, the task keeps results)."""
        if self._backend is None:
            return False
        task = self.app.tasks.get(outcome.task_name)
        return task is None or not task.ignore_result

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _publish_then_ack(self, acker: Acker, outcome: Outcome) -> None:
        tag = delivery_tag(outcome.message)
        reply_to = outcome.message.header.properties.reply_to
        stores = self._stores(outcome)
        try:
            if outcome.republish is not None:  # a retry (or a re-park): the copy is confirmed before the ack
                await self._republish(outcome)  # no reply and no stored result: the task is not finished
            else:
                record = self._record(outcome) if reply_to or stores else b""
                if reply_to:
                    await self._reply(outcome, record)
                if stores and not await self._store(outcome, record):
                    if acker.alive:
                        acker.reject(tag, requeue=True)
                    return
                if not outcome.ok:
                    await self._dead_letter(outcome)
        except PUBLISH_ERRORS as e:
            log.warning(
                "task %s [%s]: could not publish its %s (%s); the broker dead-letters it instead",
                outcome.task_name,
                outcome.message_id,
                "copy" if outcome.republish is not None else "dead letter",
                e,
            )
            if acker.alive:
                acker.reject(tag, requeue=False)
        else:
            if acker.alive:
                acker.ack(tag)
        finally:
            self._in_flight -= 1
            if self._in_flight <= 0:
                self._idle.set()

    async def _republish(self, outcome: Outcome) -> None:
        republish = outcome.republish
        assert republish is not None and self._publisher is not None
        props = outcome.message.header.properties
        if outcome.reason == REASON_RETRY:
            log.info(
                "task %s [%s] failed (%s: %s); attempt %s in %.3f s",
                outcome.task_name,
                outcome.message_id,
                outcome.exc_type,
                outcome.exc_message,
                republish.headers.get(H_ATTEMPT, "?"),
                republish.delay_s,
            )
        else:
            log.info("task %s [%s] re-published (%s)", outcome.task_name, outcome.message_id, outcome.reason)
        delay_ms = math.ceil(republish.delay_s * 1000)
        extra = schedule_headers(delay_ms, None, time.time())  # rt-eta again if beyond one ladder pass
        await self._publisher.publish(
            Outgoing(
                routing_key=source_queue(self.app, outcome.message),
                body=outcome.message.body,
                message_id=outcome.message_id,
                task_name=outcome.task_name,
                priority=props.priority,
                headers=outcome.copy_headers({**republish.headers, **extra}),
                reply_to=props.reply_to,
                correlation_id=props.correlation_id,
                content_type=props.content_type or "",
                delay_ms=delay_ms,
            )
        )

    async def _dead_letter(self, outcome: Outcome) -> None:
        props = outcome.message.header.properties
        queue_name = source_queue(self.app, outcome.message)
        log.error(
            "task %s [%s] dead-lettered: %s: %s %s",
            outcome.task_name,
            outcome.message_id,
            outcome.reason,
            outcome.exc_type,
            outcome.exc_message,
        )
        headers = outcome.copy_headers(outcome.failure_headers(queue_name, os.getpid()))
        assert self._publisher is not None
        await self._publisher.publish(
            Outgoing(
                routing_key=queue_name,
                body=outcome.message.body,
                message_id=outcome.message_id,
                task_name=outcome.task_name,
                priority=props.priority,
                headers=headers,
                correlation_id=props.correlation_id,
                content_type=props.content_type or "",
                exchange=dlx_name(self.app.settings.exchange),
            )
        )

    @staticmethod
    def _record(outcome: Outcome) -> bytes:
        """The result record for the reply and the backend; a result that is not JSON fails the task."""
        if outcome.ok:
            try:
                return encode_success(outcome.task_name, outcome.value)
            except ResultNotSerialisable as e:
                outcome.reason, outcome.exc_type, outcome.exc_message = REASON_NOT_SERIALISABLE, "TypeError", str(e)
        return encode_failure(
            outcome.task_name, outcome.exc_type, outcome.exc_message, outcome.traceback, outcome.reason or ""
        )

    async def _reply(self, outcome: Outcome, record: bytes) -> None:
        props = outcome.message.header.properties
        assert self._publisher is not None
        try:
            await self._publisher.publish(
                Outgoing(
                    routing_key=props.reply_to or "",
                    body=record,
                    message_id=outcome.message_id,
                    task_name=outcome.task_name,
                    correlation_id=props.correlation_id or outcome.message_id,
                    exchange="",
                    # Not mandatory: RabbitMQ 3.x returns every direct reply as unroutable although it
                    # delivered it. A reply to a caller that is gone is dropped by the broker, silently.
                    mandatory=False,
                )
            )
        except PublishNotConfirmed as e:  # nacked: the caller may be gone; the task still ran
            log.debug("task %s [%s]: reply not confirmed: %s", outcome.task_name, outcome.message_id, e)
        except PUBLISH_ERRORS as e:
            log.warning("task %s [%s]: reply not delivered: %s", outcome.task_name, outcome.message_id, e)

    async def _store(self, outcome: Outcome, record: bytes) -> bool:
        """Store the result, retrying for `result_store_timeout_s`; False when it could not be stored."""
        assert self._backend is not None
        deadline, pause_s = time.monotonic() + self.app.settings.result_store_timeout_s, 0.1
        while True:
            try:
                await self._backend.astore(outcome.message_id, record, self.app.settings.result_expires_s)
                return True
            except Exception as e:  # noqa: BLE001 - any plugin failure: the message must not be acked
                if time.monotonic() + pause_s > deadline or self._stopping:
                    log.error(
                        "task %s [%s]: its result could not be stored (%s); the message goes back to the queue",
                        outcome.task_name,
                        outcome.message_id,
                        e,
                    )
                    return False
                log.warning(
                    "task %s [%s]: storing its result failed (%s); retrying in %.1f s",
                    outcome.task_name,
                    outcome.message_id,
                    e,
                    pause_s,
                )
                await asyncio.sleep(pause_s)
                pause_s = min(pause_s * 2, 2.0)


async def check_queues(channel: aiormq.abc.AbstractChannel, queues: Sequence[str]) -> None:
    """Passively check that `queues` exist; raise `TopologyMismatch` naming the first one missing."""
    for q in queues:
        try:
            await channel.queue_declare(q, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise TopologyMismatch(
                f"queue {q!r} does not exist and declare_topology is False: apply the topology first "
                "(`rabbittask topology apply -A ...` as a user with configure permission)"
            ) from None


def _close_reason(closing: asyncio.Future[Any]) -> str:
    """Why a channel or connection closed, from its `closing` future, without raising."""
    if not closing.done() or closing.cancelled():
        return "connection lost"
    try:
        exc = closing.exception()
    except BaseException as e:  # noqa: BLE001 - aiormq may store a CancelledError here
        exc = e
    return "closed" if exc is None else (str(exc) or type(exc).__name__)


def _explain_consumer_timeout(exc: BaseException) -> None:
    """Say what to change when the broker closed the channel for its consumer_timeout."""
    if "acknowledgement" in str(exc):  # 406 "delivery acknowledgement on channel N timed out"
        log.error(
            "the broker's consumer_timeout closed the channel: a message was held unacked longer than it "
            "allows, and what the channel held is redelivered. Raise consumer_timeout in rabbitmq.conf, or "
            "lower --prefetch and the tasks' time limits"
        )
