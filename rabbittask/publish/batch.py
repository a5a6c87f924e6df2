"""The sync `app.batch()`: messages stream to the broker in chunks while the caller builds more.

A batch owns an event loop and an aiormq publisher for its lifetime. Every `CHUNK` messages (or
`TURN_S` after the last turn, for a slow caller) the loop takes a turn: it writes the chunk with
up to `batch_in_flight` confirms outstanding and reads the confirms that came meanwhile, then
returns to the caller. So the broker stores one chunk while the caller builds the next, instead
of idling until the block ends. The publish timeout counts only while the batch waits (for a free
slot, or at the end for the last confirms): a confirm that arrived while the caller was busy is
never taken for a late one. A gap of more than two heartbeats (`heartbeat_s`) between two sends
lets the broker close the connection: what was in flight is then reported as not confirmed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import cast

import aiormq

from rabbittask.errors import PublishError
from rabbittask.message import Outgoing
from rabbittask.publish.aio import AsyncPublisher, Pipeline
from rabbittask.settings import Settings
from rabbittask.topology import Declaration

CHUNK = 256
TURN_S = 0.05


class SyncBatch:
    """Publishes what `add()` gets in chunks; `finish()` waits for the confirms and returns the failures."""

    def __init__(
        self, settings: Settings, declarations: Callable[[], Sequence[Declaration]], on_open: Callable[[], None]
    ) -> None:
        self.settings = settings
        self.count = 0
        self._declarations = declarations  # what the publisher declares when it connects (once per process)
        self._on_open = on_open
        self._chunk = max(1, min(CHUNK, settings.batch_in_flight // 2))
        self._buffer: list[Outgoing] = []
        self._turned = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pipeline: Pipeline | None = None
        self._broken: PublishError | None = None  # once publishing failed, the rest of the batch fails at once

    def add(self, msg: Outgoing) -> None:
        """Hold `msg`; send the held ones when a chunk is full or the last turn is `TURN_S` ago."""
        buffer = self._buffer
        buffer.append(msg)
        self.count += 1
        if len(buffer) >= self._chunk or time.monotonic() - self._turned > TURN_S:
            self._turn()

    def finish(self, *, send: bool = True) -> list[tuple[str, BaseException]]:
        """Send what is held (unless `send` is False), wait for every confirm, close; return (id, error) failures."""
        if not send:
            self.count -= len(self._buffer)
            self._buffer = []
        try:
            if self._buffer:
                self._turn()
            if self._loop is None:
                return []
            self._loop.run_until_complete(self._close())
            assert self._pipeline is not None
            return self._pipeline.failed
        finally:
            if self._loop is not None:
                _close(self._loop)

    def _turn(self) -> None:
        msgs, self._buffer = self._buffer, []
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._send(msgs))
        self._turned = time.monotonic()

    async def _send(self, msgs: list[Outgoing]) -> None:
        pipeline = self._pipeline
        if pipeline is None:
            publisher = AsyncPublisher(self.settings, self._declarations())
            pipeline = self._pipeline = Pipeline(publisher, self.settings.batch_in_flight, timed=False)
            try:
                await publisher.channel()
            except PublishError as e:
                self._broken = e
            else:
                self._on_open()
        if self._broken is not None:
            pipeline.failed += [(m.message_id, self._broken) for m in msgs]
            return
        channel = cast(aiormq.Channel, await pipeline.publisher.channel())
        target = channel.delivery_tag + len(msgs)
        self._broken = await pipeline.add_all(msgs)
        # aiormq writes one publish per pass of the loop (each holds the channel lock until its frame is
        # written): keep the loop turning until the whole chunk went to the socket, not just scheduled.
        while (channel.delivery_tag < target or not channel.write_queue.empty()) and not channel.is_closed:
            await asyncio.sleep(0)

    async def _close(self) -> None:
        assert self._pipeline is not None
        try:
            await self._pipeline.wait()
        finally:
            await self._pipeline.publisher.close()


def _close(loop: asyncio.AbstractEventLoop) -> None:
    """Close `loop` as `asyncio.run()` does: cancel what still runs there (aiormq's closing tasks) first."""
    try:
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
