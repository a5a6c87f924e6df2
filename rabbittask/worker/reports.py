"""Chord members' reports to the join queue, coalesced: one confirmed record for the members of a chord
that settle within a few milliseconds of each other.

A member is acked only after its report is confirmed (settle.py waits for `report()`), so coalescing
changes nothing of the guarantee: a worker killed before the confirm runs the member again and it
reports again, and the joiner merges reports by index. What it saves is a confirmed publish to a
quorum queue per member: the reports of a burst travel as one `partial` record (the members so far,
no start), which the joiner reads like any partial.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from pydantic_core import to_json

from rabbittask.message import PROTOCOL_VERSION, Outgoing
from rabbittask.workflow import wire

log = logging.getLogger(__name__)

DELAY_S = 0.005  # longest a report waits for company (like the acker's)
BATCH_MAX = 500  # reports in one record at most


class Pending:
    """The reports of one chord waiting for their record."""

    __slots__ = ("entries", "size", "waiters")

    def __init__(self) -> None:
        self.entries: list[bytes] = []
        self.size = 0
        self.waiters: list[asyncio.Future[bool]] = []


class Reports:
    """Coalesces member reports per chord; `publish(msg)` sends one record confirmed and says if it was."""

    def __init__(self, join_queue: str, limit_bytes: int, publish: Callable[[Outgoing], Awaitable[bool]]) -> None:
        self.join_queue = join_queue
        self.limit_bytes = max(1024, limit_bytes // 2)  # room for the record around the entries
        self.publish = publish
        self.pending: dict[str, Pending] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()

    def entry(self, index: int, member: dict[str, object]) -> bytes:
        """One member's entry, encoded now (a result that is not JSON raises here, before anything waits)."""
        return b"[%d," % index + to_json(member) + b"]"

    async def report(self, chord_id: str, entry: bytes) -> bool:
        """Queue one member's entry; True once the record carrying it is confirmed."""
        batch = self.pending.get(chord_id)
        if batch is None:
            batch = self.pending[chord_id] = Pending()
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        batch.entries.append(entry)
        batch.size += len(entry)
        batch.waiters.append(waiter)
        if len(batch.entries) >= BATCH_MAX or batch.size >= self.limit_bytes:
            self._send(chord_id)
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(DELAY_S, self._flush)
        return await waiter

    def _flush(self) -> None:
        self._timer = None
        for chord_id in list(self.pending):
            self._send(chord_id)

    def _send(self, chord_id: str) -> None:
        batch = self.pending.pop(chord_id)
        body = b"".join(
            (
                b'{"v":%d,"kind":"partial","chord":' % PROTOCOL_VERSION,
                to_json(chord_id),
                b',"start":null,"members":[',
                b",".join(batch.entries),
                b"]}",
            )
        )
        msg = Outgoing(
            routing_key=self.join_queue,
            body=body,
            message_id=f"{chord_id}:reports",
            task_name=wire.RECORD_TASK,
            exchange="",
        )
        task = asyncio.ensure_future(self._publish(msg, batch.waiters))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _publish(self, msg: Outgoing, waiters: list[asyncio.Future[bool]]) -> None:
        try:
            sent = await self.publish(msg)
        except BaseException:
            sent = False
            raise
        finally:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(sent)
