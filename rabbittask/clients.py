"""The broker clients of an app: made on first use, one per thread, event loop or process as each needs.

* a `SyncPublisher` per thread (pika is not thread-safe) and per process (a forked child never
  reuses its parent's socket), closed when its thread ends;
* an `AsyncPublisher` and an `AsyncRpc` per event loop, closed when the loop shuts down;
* one `SyncRpc` per process, shared by every thread (see results/sync_rpc.py);
* the result backend, loaded from `result_backend`'s URL on first use;
* the batch in progress: this thread's `batch()`, this context's `abatch()`;
* `local`: an in-process stand-in for the broker (eager mode, `rabbittask.testing.StubBroker`) that,
  while set, takes every send, call and result instead of the network.

The app's topology is declared once per process by the first sync publisher or batch that connects;
async publishers and the RPC clients declare it on each connection they open.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Protocol

from pika.adapters.blocking_connection import BlockingChannel

from rabbittask.errors import BatchNotConfirmed, ConfigError
from rabbittask.message import Outgoing
from rabbittask.publish.aio import AsyncPublisher, Pipeline
from rabbittask.publish.batch import SyncBatch
from rabbittask.publish.declare import declare_sync
from rabbittask.publish.sync import SyncPublisher
from rabbittask.results.backend import ResultBackend, load_backend
from rabbittask.results.rpc import AsyncRpc, OnProgress
from rabbittask.results.sync_rpc import SyncRpc
from rabbittask.settings import Settings
from rabbittask.topology import Declaration
from rabbittask.unique import Claims

_LAZY_INIT = threading.Lock()  # builds the shared RPC client and the backend once, whichever thread asks first


class LocalBroker(Protocol):
    """What stands in for the broker while an app runs in eager mode or under a `StubBroker` (rabbittask.testing).

    Every message the app sends reaches it here, the one place sends leave an app, so whatever sends
    (`.delay()`, `send_task`, workflows, batches) is covered alike.
    """

    @property
    def backend(self) -> ResultBackend:
        """Where results are kept meanwhile."""
        ...

    def send(self, msg: Outgoing) -> None:
        """Take a message the app would publish."""
        ...

    async def asend(self, msg: Outgoing) -> None:
        """Async twin of `send`."""
        ...

    def call(self, msg: Outgoing, timeout_s: float) -> Any:
        """Take a request the app would send over direct reply-to; return its result."""
        ...

    async def acall(self, msg: Outgoing, timeout_s: float) -> Any:
        """Async twin of `call`."""
        ...


class _ThreadEnd:
    """Held only by a thread's locals: collected when the thread ends, which closes its publisher."""


def _close_quietly(publisher: SyncPublisher) -> None:
    if publisher.pid == os.getpid():
        with contextlib.suppress(Exception):  # at thread end there is no one to tell
            publisher.close()


class Clients:
    """The publishers, RPC clients and result backend of one app (see the module docstring)."""

    def __init__(self, settings: Settings, declarations: Callable[[], list[Declaration]]) -> None:
        """`declarations()` is what the broker must have: called when a client first connects."""
        self.settings = settings
        self._declarations = declarations
        self._local = threading.local()
        self._declared_pid = 0
        self._aio: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncPublisher] = weakref.WeakKeyDictionary()
        self._arpc: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncRpc] = weakref.WeakKeyDictionary()
        self._abatch: contextvars.ContextVar[Pipeline | None] = contextvars.ContextVar("abatch", default=None)
        # Held strongly (one per loop): a guard that is only weakly referenced is collected at once,
        # and its finalizer would close the loop's connections right after they opened.
        self._guards: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncIterator[None]] = (
            weakref.WeakKeyDictionary()
        )
        self._rpc: SyncRpc | None = None
        self._claims: Claims | None = None
        self._backend: ResultBackend | None = None
        self.local: LocalBroker | None = None

    # -- publishing ------------------------------------------------------------------------------

    def publisher(self) -> SyncPublisher:
        """This thread's sync publisher (a new one after a fork)."""
        publisher: SyncPublisher | None = getattr(self._local, "publisher", None)
        if publisher is None or publisher.pid != os.getpid():
            publisher = SyncPublisher(self.settings, self._declare_once)
            self._local.publisher = publisher
            # A thread's locals are dropped when it ends: the connection is closed then, not left to the
            # broker's heartbeat (a threaded web server may start a thread per request).
            self._local.closer = _ThreadEnd()
            weakref.finalize(self._local.closer, _close_quietly, publisher).atexit = False  # exit: as before
        return publisher

    def _declare_once(self, channel: BlockingChannel) -> None:
        if self._declared_pid != os.getpid() and self.settings.declare_topology:
            declare_sync(channel, self._declarations())
            self._declared_pid = os.getpid()

    def declare(self) -> None:
        """Declare the whole topology on the broker now, on a new connection of this thread's publisher."""
        if self.local is not None:
            return
        publisher = self.publisher()
        publisher.close()
        self._declared_pid = 0
        publisher.open()

    def send(self, msg: Outgoing) -> None:
        """Publish and wait for the confirm, or hold `msg` in this thread's batch."""
        if self.local is not None:
            self.local.send(msg)
            return
        batch: SyncBatch | None = getattr(self._local, "batch", None)
        if batch is not None:
            batch.add(msg)
        else:
            self.publisher().publish(msg)

    def apublisher(self) -> AsyncPublisher:
        """The running event loop's async publisher."""
        loop = asyncio.get_running_loop()
        publisher = self._aio.get(loop)
        if publisher is None:
            publisher = self._aio[loop] = AsyncPublisher(self.settings, self._declarations())
            self._close_with_loop()
        return publisher

    async def asend(self, msg: Outgoing) -> None:
        """Publish and wait for the confirm, or start it in this context's `abatch()`."""
        if self.local is not None:
            await self.local.asend(msg)
            return
        batch = self._abatch.get()
        if batch is None:
            await self.apublisher().publish(msg)
        else:
            await batch.add(msg)

    def _close_with_loop(self) -> None:
        # An async generator started on the loop is closed by the loop's shutdown_asyncgens(), which
        # asyncio.run() calls before closing the loop: the app's connections of that loop close with it.
        loop = asyncio.get_running_loop()
        if loop in self._guards:
            return

        async def guard() -> AsyncIterator[None]:
            try:
                yield
            finally:
                self._guards.pop(loop, None)
                await self.aclose()

        gen = self._guards[loop] = guard()
        asyncio.ensure_future(gen.__anext__())

    # -- batches ---------------------------------------------------------------------------------

    @contextmanager
    def batch(self) -> Iterator[None]:
        """This thread's sends stream through one `SyncBatch`; on exit wait for every confirm (see `App.batch`)."""
        if getattr(self._local, "batch", None) is not None:
            yield  # nested: the outer batch confirms
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise ConfigError("app.batch() cannot be used inside a running event loop: use `async with app.abatch()`")
        if self.local is not None:
            yield  # each send goes to the stand-in at once
            return
        batch = self._local.batch = SyncBatch(self.settings, self._batch_declarations, self._batch_opened)
        try:
            yield
        except BaseException:
            self._local.batch = None
            with contextlib.suppress(Exception):
                batch.finish(send=False)
            raise
        self._local.batch = None
        raise_failed(batch.finish(), batch.count)

    def _batch_declarations(self) -> Sequence[Declaration]:
        # The topology is declared once per process, not per batch.
        return () if self._declared_pid == os.getpid() else self._declarations()

    def _batch_opened(self) -> None:
        self._declared_pid = os.getpid()

    @asynccontextmanager
    async def abatch(self) -> AsyncIterator[None]:
        """This context's sends start at once on the loop's publisher; confirms are awaited on exit."""
        if self._abatch.get() is not None or self.local is not None:
            yield
            return
        batch = Pipeline(self.apublisher(), self.settings.batch_in_flight)
        token = self._abatch.set(batch)
        try:
            yield
        finally:
            self._abatch.reset(token)
            await batch.wait()
        raise_failed(batch.failed, batch.count)

    # -- RPC and results -------------------------------------------------------------------------

    def call(self, msg: Outgoing, timeout_s: float, on_progress: OnProgress | None = None) -> Any:
        """Send a request over direct reply-to and return the task's result (see `SyncRpc`)."""
        if self.local is not None:
            return self.local.call(msg, timeout_s)  # eager and stub runs: reports stay in the process
        return self.rpc().call(msg, timeout_s, on_progress)

    async def acall(self, msg: Outgoing, timeout_s: float, on_progress: OnProgress | None = None) -> Any:
        """Async twin of `call` (see `AsyncRpc`)."""
        if self.local is not None:
            return await self.local.acall(msg, timeout_s)
        return await self.arpc().call(msg, timeout_s, on_progress)

    def rpc(self) -> SyncRpc:
        """The process's sync RPC client, shared by every thread."""
        rpc = self._rpc
        if rpc is None:
            with _LAZY_INIT:
                rpc = self._rpc = self._rpc or SyncRpc(self.settings, self._declarations())
        return rpc

    def arpc(self) -> AsyncRpc:
        """The running event loop's RPC client: its calls share a connection and reply consumer."""
        loop = asyncio.get_running_loop()
        rpc = self._arpc.get(loop)
        if rpc is None:
            self._close_with_loop()
            rpc = self._arpc[loop] = AsyncRpc(self.settings, self._declarations())
        return rpc

    @property
    def backend(self) -> ResultBackend | None:
        """The result backend chosen by `result_backend`'s URL scheme, or None when results are not stored.

        While a `local` stand-in is set, its own (in memory, whatever `result_backend` says).
        """
        if self.local is not None:
            return self.local.backend
        if self._backend is None and self.settings.result_backend:
            with _LAZY_INIT:
                self._backend = self._backend or load_backend(self.settings.result_backend)
        return self._backend

    # -- closing ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Close this thread's publisher connection, the process's RPC connection and the backend's."""
        publisher: SyncPublisher | None = getattr(self._local, "publisher", None)
        if publisher is not None:
            publisher.close()
        if self._rpc is not None:
            self._rpc.close()  # shared by all threads: a later call reopens it
        if self._backend is not None:
            self._backend.close()
        if self._claims is not None:
            self._claims.close()

    def unique_claims(self) -> Claims:
        """The markers of unique tasks (`unique_for`, see unique.py), made on first use."""
        claims = self._claims
        if claims is None:
            with _LAZY_INIT:
                claims = self._claims = self._claims or Claims(self.settings)
        return claims

    async def aclose(self) -> None:
        """Close this event loop's publisher, RPC and result-backend connections."""
        loop = asyncio.get_running_loop()
        publisher = self._aio.pop(loop, None)
        if publisher is not None:
            await publisher.close()
        rpc = self._arpc.pop(loop, None)
        if rpc is not None:
            await rpc.close()
        if self._backend is not None:
            await self._backend.aclose()


def raise_failed(failed: list[tuple[str, BaseException]], total: int) -> None:
    """Raise `BatchNotConfirmed` naming the messages of a batch that were not confirmed, if any."""
    if failed:
        ids = [i for i, _ in failed]
        first = failed[0][1]
        shown = ", ".join(ids[:20]) + (" ..." if len(ids) > 20 else "")
        raise BatchNotConfirmed(
            f"{len(failed)} of {total} message(s) of the batch were not confirmed (first error: {first}); ids: {shown}",
            ids,
        )
