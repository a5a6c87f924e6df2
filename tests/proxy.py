"""A TCP proxy to the broker that can black-hole its connections: bytes dropped both ways, nothing closed.

Only missed heartbeats reveal such a cut (no RST, no FIN), which is what a dead network path or a
stateful firewall that forgot the connection looks like. Async tests run `BlackHoleProxy` on their
loop; `proxy_thread()` runs one on a loop of its own for tests that drive subprocesses.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit


class BlackHoleProxy:
    """A TCP proxy to the broker that can start dropping every byte both ways without closing anything."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.black_hole = False
        self.drop_to_client = False  # forward what clients send, drop what the broker answers (confirms too)
        self.loop: asyncio.AbstractEventLoop | None = None  # set by `proxy_thread`
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._handlers: set[asyncio.Task[None]] = set()

    def url(self, broker_url: str) -> str:
        """`broker_url` with its host and port replaced by this proxy's."""
        parts = urlsplit(broker_url)
        return urlunsplit(parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{self.port}"))

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        handler.add_done_callback(self._handlers.discard)
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._writers += [writer, up_writer]
        await asyncio.gather(
            self._pump(reader, up_writer), self._pump(up_reader, writer, to_client=True), return_exceptions=True
        )
        for w in (writer, up_writer):
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, to_client: bool = False) -> None:
        while data := await reader.read(65536):
            if not self.black_hole and not (to_client and self.drop_to_client):
                writer.write(data)
                await writer.drain()

    async def cut(self) -> None:
        """Close every connection through the proxy, both sides; new ones are still served."""
        writers, self._writers = self._writers, []
        for w in writers:
            w.close()

    def cut_from_thread(self) -> None:
        """`cut()` from another thread than the proxy's loop (`proxy_thread`)."""
        assert self.loop is not None
        asyncio.run_coroutine_threadsafe(self.cut(), self.loop).result(5)

    async def close(self) -> None:
        """Close every connection and the listener; waits for the handlers to end (cancelled ones make
        Python 3.11's stream callback log a CancelledError)."""
        for w in self._writers:
            w.close()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=5)
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()


@contextlib.contextmanager
def proxy_thread(broker_url: str) -> Iterator[BlackHoleProxy]:
    """A `BlackHoleProxy` to `broker_url`, served from a thread; set `.black_hole` from the test."""
    parts = urlsplit(broker_url)
    proxy = BlackHoleProxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    loop = asyncio.new_event_loop()
    proxy.loop = loop
    thread = threading.Thread(target=loop.run_forever, name="black-hole-proxy", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(proxy.start(), loop).result(5)
        yield proxy
    finally:
        asyncio.run_coroutine_threadsafe(proxy.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
