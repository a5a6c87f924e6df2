"""Sync `.call()`: every thread of a process shares one pika connection and one reply consumer.

pika is not thread-safe, so one thread at a time uses the connection. The caller that finds it free
*drives* it: it publishes and runs pika's I/O loop itself until its reply arrives, so a sequential
caller never waits for another thread to be scheduled (as fast as a connection of its own; a loop
thread that callers hand requests to cost ~0.2 ms per call on a busy 2-core machine). A caller
that arrives while another drives hands its publish to the driver through
`add_callback_threadsafe` (pika's one thread-safe method) and sleeps until its reply, or its turn
to drive, comes. A ticker thread drives for a moment when nobody has for a while, so heartbeats
flow while the process makes no calls.

Publisher confirms are taken asynchronously: a call waits for its reply, not for the request's
confirm (a classic queue may confirm a persistent message only after the worker acked it); a nack
or an unroutable return fails the call at once.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

import pika
import pika.channel
import pika.exceptions
import pika.frame
from pika.adapters.blocking_connection import BlockingChannel

from rabbittask.amqp.link import BlockingLink
from rabbittask.amqp.properties import pika_properties
from rabbittask.errors import PublishConnectionError, PublishNotConfirmed, TopologyMismatch
from rabbittask.message import Outgoing
from rabbittask.progress import H_PROGRESS, H_PROGRESS_REPLY
from rabbittask.publish.declare import declare_sync
from rabbittask.results.record import decode_result
from rabbittask.results.rpc import REPLY_TO, OnProgress, call_back, reply_timeout
from rabbittask.settings import Settings, mask_url
from rabbittask.topology import Declaration

log = logging.getLogger(__name__)

TICK_S = 5.0  # at most this long without driving the connection while idle (heartbeats: 30 s)
SLICE_S = 1.0  # a driver returns from pika's loop at least this often to check its deadline
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (pika.exceptions.AMQPError, OSError)


class _Call:
    """One request and, once `done`, its reply body or error."""

    __slots__ = ("msg", "submitted", "done", "body", "error", "on_progress", "reports")

    def __init__(self, msg: Outgoing, on_progress: OnProgress | None = None) -> None:
        self.msg = msg
        self.on_progress = on_progress
        self.reports: list[bytes] = []  # progress messages for the caller's own thread to hand to on_progress
        self.submitted = False  # handed to pika (published, or queued for the driver to publish)
        self.done = False
        self.body = b""
        self.error: Exception | None = None


_TICKER = _Call(Outgoing("", b"", "", "(ticker)"))  # the ticker's mark when it drives


class SyncRpc:
    """Direct reply-to calls for every thread of a process (see the module docstring)."""

    def __init__(self, settings: Settings, decls: Sequence[Declaration]) -> None:
        self.settings = settings
        self.decls = decls
        self._cv = threading.Condition()
        self._driver: _Call | None = None
        self._last_drive = 0.0
        self._calls: dict[str, _Call] = {}  # waiting for a reply, by correlation id (the task id)
        self._tags: dict[int, _Call] = {}  # waiting for a confirm, by delivery tag
        self._next_tag = 0
        self._link = BlockingLink(settings, "rpc")
        self._pid = os.getpid()
        self._stopped = threading.Event()
        self._ticker: threading.Thread | None = None

    # -- calling ---------------------------------------------------------------------------------------

    def call(self, msg: Outgoing, timeout_s: float, on_progress: OnProgress | None = None) -> Any:
        """Publish `msg` with reply-to set and wait for the task's result, from any thread.

        `on_progress` is called, in this thread, with each `Progress` the task reports while the call waits.
        """
        if self._pid != os.getpid():
            self._forked()
        msg.reply_to, msg.correlation_id = REPLY_TO, msg.message_id
        if on_progress is not None:
            msg.headers = {**(msg.headers or {}), H_PROGRESS_REPLY: 1}
        call = _Call(msg, on_progress)
        with self._cv:
            self._calls[msg.message_id] = call
        try:
            self._wait(call, time.monotonic() + timeout_s, timeout_s)
        finally:
            with self._cv:
                self._calls.pop(msg.message_id, None)
        self._progress(call)  # what came before the result
        if call.error is not None:
            raise call.error
        if not call.done:
            raise reply_timeout(msg, timeout_s)
        return decode_result(call.body)

    def _wait(self, call: _Call, deadline: float, timeout_s: float) -> None:
        """Until `call` is done or the deadline passed: drive the connection, or sleep while another thread does."""
        while not call.done:
            self._progress(call)
            with self._cv:
                while self._driver is not None and not call.done and not call.reports:
                    if not call.submitted:
                        self._hand_over(call)
                    left_s = deadline - time.monotonic()
                    if left_s <= 0:
                        return
                    self._cv.wait(left_s)  # woken by our reply, or when the driver leaves
                if call.done or call.reports:
                    continue  # the loop's test returns; reports are handed over at its top
                self._driver = call
            try:
                if self._open_if_needed():
                    deadline = max(deadline, time.monotonic() + timeout_s)  # the timeout excludes connecting
                if not call.submitted:
                    self._publish(call)
                self._drive(lambda: call.done or bool(call.reports), deadline)
            except CONNECTION_ERRORS as e:
                self._lost(e)
            except BaseException:  # e.g. KeyboardInterrupt inside pika's loop: its state is unknown now
                self._close_connection()
                raise
            finally:
                self._release()
            if time.monotonic() >= deadline:
                return

    @staticmethod
    def _progress(call: _Call) -> None:
        """Hand the progress messages that came for `call` to its callback (in the caller's thread)."""
        while call.reports and call.on_progress is not None:
            call_back(call.on_progress, call.reports.pop(0))

    def _hand_over(self, call: _Call) -> None:
        """Have the driving thread publish `call` (under the lock, while another thread drives)."""
        connection = self._link.connection
        if connection is None or not connection.is_open:
            return  # we publish it ourselves once we drive
        call.submitted = True
        try:
            connection.add_callback_threadsafe(functools.partial(self._publish, call))
        except pika.exceptions.ConnectionWrongStateError:
            call.submitted = False

    def _drive(self, until: Any, deadline: float) -> None:
        connection = self._link.connection
        assert connection is not None
        while not until():
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                return
            connection.process_data_events(time_limit=min(left_s, SLICE_S))

    def _release(self) -> None:
        with self._cv:
            self._driver = None
            self._last_drive = time.monotonic()
            self._cv.notify_all()

    # -- on the driving thread -------------------------------------------------------------------------

    def _open_if_needed(self) -> bool:
        if self._link.is_open:
            return False
        self._link.open(self._setup)
        self._next_tag = 0
        self._start_ticker()
        return True

    def _setup(self, channel: BlockingChannel) -> None:
        connection = channel.connection
        declare_sync(channel, self.decls)
        channel.basic_consume(REPLY_TO, self._on_reply, auto_ack=True)
        # Confirms and returns on the underlying channel: BlockingChannel would wait for each confirm.
        impl: pika.channel.Channel = channel._impl
        confirming: list[bool] = []

        def confirm_ok(_frame: object) -> None:
            confirming.append(True)
            connection.call_later(0, _nothing)  # ends the wait below

        impl.confirm_delivery(ack_nack_callback=self._on_confirm, callback=confirm_ok)
        impl.add_on_return_callback(self._on_return)
        deadline = time.monotonic() + self.settings.connect_timeout_s
        while not confirming and time.monotonic() < deadline:
            connection.process_data_events(time_limit=deadline - time.monotonic())
        if not confirming:
            raise pika.exceptions.AMQPConnectionError("no answer to confirm.select")

    def _publish(self, call: _Call) -> None:
        channel = self._link.channel
        if call.done or call.msg.message_id not in self._calls or channel is None:
            return  # answered, failed or given up (a hand-over that ran late)
        msg = call.msg
        msg.reply_to, msg.correlation_id = REPLY_TO, msg.message_id
        props = pika_properties(msg)
        exchange = self.settings.exchange if msg.exchange is None else msg.exchange
        channel._impl.basic_publish(exchange, msg.routing_key, msg.body, props, mandatory=True)
        call.submitted = True
        self._next_tag += 1
        self._tags[self._next_tag] = call

    def _on_reply(self, _ch: Any, _method: Any, props: pika.BasicProperties, body: bytes) -> None:
        if props.headers and props.headers.get(H_PROGRESS):
            with self._cv:
                call = self._calls.get(props.correlation_id or "")
                if call is not None and call.on_progress is not None:
                    call.reports.append(body)
                    self._cv.notify_all()  # a caller asleep while another thread drives takes it
            return
        with self._cv:
            call = self._calls.pop(props.correlation_id or "", None)
        if call is not None:
            call.body = body
            self._finish(call, wake=False)  # a delivery ends process_data_events by itself

    def _on_confirm(self, frame: pika.frame.Method) -> None:
        method = frame.method
        tags = [t for t in self._tags if t <= method.delivery_tag] if method.multiple else [method.delivery_tag]
        for tag in tags:
            call = self._tags.pop(tag, None)
            if call is not None and isinstance(method, pika.spec.Basic.Nack):
                call.error = PublishNotConfirmed(
                    f"task {call.msg.task_name!r} (id {call.msg.message_id}) was rejected by the broker (nack): "
                    f"queue {call.msg.routing_key!r} may be full (x-overflow=reject-publish) or unavailable"
                )
                self._finish(call)

    def _on_return(self, _ch: Any, method: Any, props: pika.BasicProperties, _body: bytes) -> None:
        with self._cv:
            call = self._calls.get(props.correlation_id or "")
        if call is not None:
            call.error = PublishNotConfirmed(
                f"task {call.msg.task_name!r} (id {call.msg.message_id}) was returned by the broker: no queue is "
                f"bound to routing key {method.routing_key!r} on exchange {method.exchange!r}"
            )
            self._finish(call)

    def _finish(self, call: _Call, wake: bool = True) -> None:
        call.done = True
        if call is self._driver:
            connection = self._link.connection
            if wake and connection is not None:  # a return or nack does not end process_data_events
                connection.call_later(0, _nothing)
        else:
            with self._cv:
                self._cv.notify_all()

    def _lost(self, e: BaseException) -> None:
        """The connection broke: every waiting call fails; the next call connects again."""
        error = e if isinstance(e, PublishConnectionError | TopologyMismatch) else None
        why = mask_url(str(e) or type(e).__name__)
        with self._cv:
            calls, self._calls = list(self._calls.values()), {}
        for call in calls:
            call.error = error or PublishConnectionError(
                f"RPC call of task {call.msg.task_name!r} (id {call.msg.message_id}) lost its connection: {why}"
            )
            call.done = True
        self._tags.clear()
        self._close_connection()

    def _close_connection(self) -> None:
        self._link.close()

    # -- idle, close, fork -----------------------------------------------------------------------------

    def _start_ticker(self) -> None:
        if self._ticker is not None and self._ticker.is_alive() and not self._stopped.is_set():
            return
        tick_s = min(TICK_S, self.settings.heartbeat_s / 3) if self.settings.heartbeat_s else TICK_S
        self._stopped = threading.Event()
        self._ticker = threading.Thread(
            target=self._tick, args=(self._stopped, tick_s), name="rabbittask-rpc-ticker", daemon=True
        )
        self._ticker.start()
        _live.add(self)

    def _tick(self, stopped: threading.Event, tick_s: float) -> None:
        """Drive the idle connection briefly: heartbeats, late confirms, a close by the broker."""
        while not stopped.wait(tick_s):
            with self._cv:
                connection = self._link.connection
                idle = self._driver is None and time.monotonic() - self._last_drive >= tick_s
                if not idle or connection is None:
                    continue
                self._driver = _TICKER
            try:
                connection.process_data_events(time_limit=0)
            except CONNECTION_ERRORS as e:
                log.debug("RPC connection lost while idle: %s", mask_url(str(e) or type(e).__name__))
                self._lost(e)
            finally:
                self._release()

    def close(self, timeout_s: float = 5.0) -> None:
        """Close the connection and stop the ticker; a later call connects again."""
        self._stopped.set()
        if self._pid != os.getpid():
            return
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while self._driver is not None and time.monotonic() < deadline:
                self._cv.wait(deadline - time.monotonic())
            if self._driver is not None:
                return  # a call still drives; its connection closes with the process
            self._driver = _TICKER
        try:
            self._close_connection()
        finally:
            self._release()
        _live.discard(self)

    def _forked(self) -> None:
        # A forked child shares the parent's socket: never touch it, start afresh.
        with self._cv:
            if self._pid != os.getpid():
                self._link.forget()
                self._ticker = None
                self._driver, self._calls, self._tags = None, {}, {}
                self._stopped = threading.Event()
                self._pid = os.getpid()


def _nothing() -> None:
    pass


_live: weakref.WeakSet[SyncRpc] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """Close RPC connections at interpreter exit, so the broker sees a clean close, not a dropped socket."""
    for rpc in list(_live):
        rpc.close(timeout_s=1.0)
