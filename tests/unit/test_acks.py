"""The acker coalesces acks into `multiple` frames and never acks for a closed channel."""

from __future__ import annotations

import asyncio
from typing import Any

from rabbittask.worker.acks import Acker


class FakeChannel:
    def __init__(self) -> None:
        self.frames: list[tuple[Any, ...]] = []
        self.is_closed = False

    async def basic_ack(self, tag: int, multiple: bool = False, wait: bool = True) -> None:
        self.frames.append(("ack", tag, multiple))

    async def basic_reject(self, tag: int, *, requeue: bool = True, wait: bool = True) -> None:
        self.frames.append(("reject", tag, requeue))

    async def basic_nack(self, tag: int, multiple: bool = False, requeue: bool = True, wait: bool = True) -> None:
        self.frames.append(("nack", tag, multiple, requeue))


async def settle(acker: Acker) -> None:
    await asyncio.sleep(0)
    await acker.drain()


async def test_in_order_completions_become_one_multiple_ack() -> None:
    channel = FakeChannel()
    acker = Acker(channel)  # type: ignore[arg-type]
    for tag in range(1, 101):
        acker.delivered(tag)
    for tag in range(1, 101):
        acker.ack(tag)
    await settle(acker)
    assert channel.frames == [("ack", 100, True)]


async def test_a_slow_task_holds_only_itself_back() -> None:
    channel = FakeChannel()
    acker = Acker(channel)  # type: ignore[arg-type]
    for tag in (1, 2, 3, 4):
        acker.delivered(tag)
    acker.ack(1)
    acker.ack(3)
    acker.ack(4)
    await settle(acker)
    assert channel.frames[0] == ("ack", 1, True)
    assert sorted(channel.frames[1:]) == [("ack", 3, False), ("ack", 4, False)]
    acker.reject(2, requeue=False)
    acker.delivered(5)
    acker.ack(5)
    await settle(acker)
    assert channel.frames[3:] == [("reject", 2, False), ("ack", 5, True)]


async def test_nothing_is_acked_once_the_channel_closed() -> None:
    channel = FakeChannel()
    acker = Acker(channel)  # type: ignore[arg-type]
    acker.delivered(1)
    channel.is_closed = True
    acker.ack(1)
    await settle(acker)
    assert channel.frames == [] and not acker.alive


async def test_an_urgent_ack_goes_out_in_the_next_loop_pass_not_after_the_delay() -> None:
    # Given a wide window (an ack would wait DELAY_S for company) and a partition's delivery marked urgent
    channel = FakeChannel()
    acker = Acker(channel, prefetch=64)  # type: ignore[arg-type]
    acker.delivered(1)
    acker.delivered(2)
    acker.urgent(2)
    acker.ack(1)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert channel.frames == []  # an ordinary ack waits for company
    acker.ack(2)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert channel.frames == [("ack", 2, True)]  # the urgent one takes the finished prefix with it at once


async def test_a_message_handed_back_unstarted_is_nacked_so_rabbitmq_4_3_does_not_count_it() -> None:
    # From 4.3 a quorum queue counts basic.reject against its delivery limit, and not basic.nack
    channel = FakeChannel()
    acker = Acker(channel)  # type: ignore[arg-type]
    for tag in (1, 2):
        acker.delivered(tag)
    acker.ack(1)
    acker.hand_back(2)
    await settle(acker)
    assert ("nack", 2, False, True) in channel.frames and not any(f[0] == "reject" for f in channel.frames)
