"""Acknowledgements of one channel, coalesced into `multiple` acks.

Tasks finish out of order (threads, async tasks), but delivery tags on a channel only grow.
The acker acks the longest finished prefix of outstanding tags with one `multiple=True` frame
and acks stragglers one by one. It sends when a quarter of the prefetch window has finished, or
`DELAY_S` after the first unsent ack, so a drain of no-op tasks costs a handful of frames (each a
system call here and work for the broker) per thousand messages while the window stays mostly
open. An acker dies with its channel: tags from before a reconnect are never acked on the new one.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable

import aiormq.abc
from aiormq.abc import DeliveredMessage

log = logging.getLogger(__name__)

DELAY_S = 0.005  # longest an ack waits for company


def delivery_tag(message: DeliveredMessage) -> int:
    """The delivery tag of a consumed message."""
    tag = message.delivery_tag
    assert tag is not None, "only consumed messages carry a delivery tag"
    return tag


class Acker:
    """Settles deliveries of one channel: ack (batched), reject or requeue."""

    def __init__(self, channel: aiormq.abc.AbstractChannel, prefetch: int = 1) -> None:
        self.channel = channel
        self._batch = max(1, prefetch // 4)  # finished tasks that are worth a frame at once
        self._order: deque[int] = deque()
        self._done: set[int] = set()
        self._settled: set[int] = set()  # rejected or acked alone while not at the head
        self._soon = False  # a flush is due in the next loop pass
        self._timer: asyncio.TimerHandle | None = None  # a flush is due in DELAY_S
        self._held = False
        # Consumers whose next message comes only after this ack (prefetch 1: partitions): never delayed;
        # consumer tag -> partition queue. `active` holds the partitions a message came from on this channel:
        # with single-active-consumer only the active consumer gets any, and stays so while the channel lives.
        self.urgent_consumers: dict[str, str] = {}
        self.active: set[str] = set()
        self._urgent: set[int] = set()
        self._sends: set[asyncio.Task[None]] = set()
        self._last: asyncio.Task[None] | None = None  # the latest frame sent: the next one waits for it
        self._loop = asyncio.get_running_loop()

    def window(self, prefetch: int) -> None:
        """The prefetch changed (adaptive prefetch): send acks per quarter of the new window."""
        self._batch = max(1, prefetch // 4)

    @property
    def alive(self) -> bool:
        """True while the channel is open, so its delivery tags still mean something."""
        return not self.channel.is_closed

    def delivered(self, tag: int) -> None:
        """Record a delivery (in tag order)."""
        self._order.append(tag)

    def urgent(self, tag: int) -> None:
        """Ack `tag` in the next loop pass, not after `DELAY_S`: its consumer waits for it (prefetch 1)."""
        self._urgent.add(tag)

    def ack(self, tag: int) -> None:
        """Ack `tag` soon, together with the other tags finished by then."""
        done = self._done
        done.add(tag)
        if len(done) >= self._batch or (self._urgent and tag in self._urgent):
            self._urgent.discard(tag)
            if not self._soon:
                self._soon = True
                self._loop.call_soon(self._flush)
        elif self._timer is None:
            self._timer = self._loop.call_later(DELAY_S, self._flush)

    def hold(self) -> None:
        """Send the acks pending now, then keep later ones back (each would let the broker send one more message)."""
        self._flush()
        self._held = True

    def release(self) -> None:
        """Send the acks kept back (once the consumer is cancelled), and acks from now on."""
        self._held = False
        self._flush()

    def reject(self, tag: int, *, requeue: bool) -> None:
        """Reject `tag` now: back to the queue, or dead-lettered by the broker."""
        self._settled.add(tag)
        self._send(self.channel.basic_reject(tag, requeue=requeue, wait=False))

    def hand_back(self, tag: int) -> None:
        """Return `tag` unstarted to the head of its queue with `basic.nack`, not `basic.reject`.

        From RabbitMQ 4.3 a quorum queue charges `basic.reject` against `x-delivery-limit` and not
        `basic.nack`: a message handed back at a warm shutdown never ran, so it must not move towards
        the dead-letter queue. Before 4.3 both count alike.
        """
        self._settled.add(tag)
        self._send(self.channel.basic_nack(tag, multiple=False, requeue=True, wait=False))

    def _flush(self) -> None:
        self._soon = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._held or not self.alive:
            return
        order, done, settled = self._order, self._done, self._settled
        top = 0
        while order:
            head = order[0]
            if head in done:
                done.discard(head)
                top = head
            elif head in settled:
                settled.discard(head)
            else:
                break
            order.popleft()
        if top:
            self._send(self.channel.basic_ack(top, multiple=True, wait=False))
        for tag in done:  # finished while an earlier task still runs: ack alone
            self._send(self.channel.basic_ack(tag, wait=False))
            settled.add(tag)
        done.clear()

    def _send(self, frame: Awaitable[None]) -> None:
        # Frames go out in the order they were settled: aiormq's write queue lets a later put overtake one
        # waiting for room, and a multiple ack that overtook a reject would ack the rejected tag (lost
        # unrun) and close the channel on the reject's unknown tag. So each send waits for the one before.
        previous = self._last

        async def in_order() -> None:
            if previous is not None and not previous.done():
                await asyncio.wait([previous])
            await frame

        task = self._last = asyncio.ensure_future(in_order())
        self._sends.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sends.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning(
                "could not settle a delivery (channel closed?): %s; the broker will redeliver it", task.exception()
            )

    async def drain(self) -> None:
        """Send what is pending and wait until the frames are written."""
        self._flush()
        if self._sends:
            await asyncio.wait(set(self._sends))
