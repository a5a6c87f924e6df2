"""The rate stage: a run of a rate-limited task waits for a token; one elected child mints the tokens.

Tokens are empty messages in a queue per limited task, `<exchange>.rate.<task>`. Each child that
runs a limited task consumes that queue with a prefetch of 1 on a connection of its own, and a
message of the task waits (in its own asyncio task: other messages of the child go on; unacked:
it stays the broker's) until a token comes, then acks the token and goes on to dispatch. The
broker pushes each token to one waiting consumer the moment it is minted, so the rate is the
minting rate, however many workers take part.

The minter is the child that holds the baton: a message of the single-active-consumer queue
`<exchange>.rate.minter`, held unacked by the active consumer. When that child dies its connection
closes, the broker makes the next consumer active and hands it the baton, which starts minting at
once. It mints every `TICK_S` what the elapsed time is worth at each task's rate, and tops
each bucket up to `burst` tokens at most (ready tokens are counted by a declare), so an idle
period never stores more than a burst (or `PAY_BACK_S` worth, if that is more), and neither does
a minter that stalled (`tokens_to_mint`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import TYPE_CHECKING, Any

import aiormq
import aiormq.abc
from aiormq.abc import DeliveredMessage

from rabbittask.amqp.connect import CONNECTION_ERRORS, cancelled_here, connect
from rabbittask.amqp.link import close_quietly, close_when_cancelled
from rabbittask.control.rates import RATES, Rate
from rabbittask.errors import RabbitTaskError

if TYPE_CHECKING:
    from rabbittask.app import App

log = logging.getLogger(__name__)

TICK_S = 0.05
PAY_BACK_S = 0.25  # a minter late by up to this much mints what it owes; a longer stall is dropped
ELECT_S = 0.5
RETRY_S = 1.0
TOKEN_QUEUE_EXPIRES_MS = 3_600_000  # a token queue no one used for an hour goes away
ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, aiormq.exceptions.AMQPError)
FAILURES: tuple[type[BaseException], ...] = (*ERRORS, RabbitTaskError)  # a refused or lost connection included
ELECTION_ERRORS: tuple[type[BaseException], ...] = (*FAILURES, asyncio.CancelledError)


def token_queue_name(exchange: str, task_name: str) -> str:
    """Name of the token queue of a rate-limited task."""
    return f"{exchange}.rate.{task_name}"


def minter_queue_name(exchange: str) -> str:
    """Name of the single-active-consumer queue whose baton holder mints the tokens."""
    return f"{exchange}.rate.minter"


# A single-active-consumer queue holding one baton: the broker itself picks the minter and hands the
# baton on when it goes (no polling, no refused declares in the broker's log). Max-length counts ready
# messages only, so the held baton plus one spare is all it ever holds.
MINTER_ARGUMENTS: dict[str, Any] = {
    "x-queue-type": "classic",
    "x-single-active-consumer": True,
    "x-max-length": 1,
    "x-overflow": "reject-publish",
}
TOKEN_ARGUMENTS: dict[str, Any] = {"x-queue-type": "classic", "x-expires": TOKEN_QUEUE_EXPIRES_MS}


class RateGate:
    """Takes a token before each run of a limited task; mints them when elected. `start()`, then `close()`."""

    def __init__(self, app: App, handing_back: asyncio.Event) -> None:
        self.exchange = app.settings.exchange
        self.settings = app.settings
        self.handing_back = handing_back
        RATES.declared = {t.name: t.rate_limit for t in app.tasks.values() if t.rate_limit is not None}
        self._connection: aiormq.abc.AbstractConnection | None = None
        self._tokens: dict[str, asyncio.Queue[tuple[aiormq.abc.AbstractChannel, int]]] = {}
        self._channels: dict[str, aiormq.abc.AbstractChannel] = {}
        self._lock = asyncio.Lock()
        self._minter: asyncio.Task[None] | None = None
        self.minting = False

    def start(self) -> None:
        self._minter = asyncio.ensure_future(self._elect())

    async def close(self) -> None:
        if self._minter is not None:
            self._minter.cancel()
            with contextlib.suppress(asyncio.CancelledError, *ERRORS):
                await self._minter
        if self._connection is not None:
            await close_quietly(self._connection, "worker rates")

    def limit_of(self, message: DeliveredMessage) -> Rate | None:
        """The rate limit of the message's task now, or None (the fast path: no task is limited)."""
        if not RATES.declared and not RATES.overrides:
            return None
        return RATES.of(message.header.properties.message_type or "")

    async def acquire(self, task_name: str) -> bool:
        """Wait for a token of `task_name`; False if the child hands its messages back meanwhile."""
        while not self.handing_back.is_set():
            try:
                channel, tokens = await self._consume(task_name)
            except FAILURES as e:  # a connection refused or lost: the session says so too
                log.warning("rate limit of %s: no token queue (%s); retrying in %.0f s", task_name, e, RETRY_S)
                if await self._handing_back_within(RETRY_S):
                    return False
                continue
            got = asyncio.ensure_future(tokens.get())
            back = asyncio.ensure_future(self.handing_back.wait())
            try:  # no token comes on a channel that closed (its connection lost, its consumer cancelled)
                await asyncio.wait([got, back, channel.closing], return_when=asyncio.FIRST_COMPLETED)
            except BaseException:  # cancelled (the session's connection was lost): no orphan may take a token
                if got.done() and not got.cancelled():
                    tokens.put_nowait(got.result())  # one in hand: the next waiter takes it
                raise
            finally:
                back.cancel()
                if not got.done():
                    got.cancel()
            if not got.done() or got.cancelled():  # a cancel is only asked for until the loop runs it
                if back.done():
                    return False  # handing back: the caller hands the message back
                continue  # the token channel closed: consume again
            token_channel, tag = got.result()
            if token_channel.is_closed:
                continue  # its channel closed: the broker gave the token to someone else
            with contextlib.suppress(*ERRORS):
                await token_channel.basic_ack(tag)
            return True
        return False

    async def _handing_back_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self.handing_back.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _connect(self) -> aiormq.abc.AbstractConnection:
        if self._connection is None or self._connection.is_closed:
            self._connection = await connect(self.settings, "worker rates")
            self._channels.clear()
        return self._connection

    async def _consume(
        self, task_name: str
    ) -> tuple[aiormq.abc.AbstractChannel, asyncio.Queue[tuple[aiormq.abc.AbstractChannel, int]]]:
        """The channel and tokens of `task_name` as they come (a consumer with prefetch 1, started on first use)."""
        async with self._lock:
            channel = self._channels.get(task_name)
            tokens = self._tokens.setdefault(task_name, asyncio.Queue())
            if channel is not None and not channel.is_closed:
                return channel, tokens
            connection = await self._connect()
            channel = await connection.channel()
            queue = token_queue_name(self.exchange, task_name)
            await channel.queue_declare(queue, durable=True, arguments=TOKEN_ARGUMENTS)
            await channel.basic_qos(prefetch_count=1)

            async def on_token(message: DeliveredMessage, channel: aiormq.abc.AbstractChannel = channel) -> None:
                if message.delivery_tag is not None:
                    tokens.put_nowait((channel, message.delivery_tag))

            close_when_cancelled(channel, f"the token queue {queue}")
            await channel.basic_consume(queue, on_token)
            self._channels[task_name] = channel
            return channel, tokens

    # -- minting -------------------------------------------------------------------------------------

    async def _elect(self) -> None:
        """Stand for minter while a task is limited; after a lost connection, stand again."""
        while True:
            try:
                if RATES.limited():
                    await self._stand()
            except ELECTION_ERRORS as e:  # a CancelledError of aiormq's (its connection closed): stand again
                if cancelled_here(e):
                    raise
                log.debug("rate-limit election: %s", e)
            finally:
                self.minting = False
            await asyncio.sleep(ELECT_S)

    async def _stand(self) -> None:
        """Wait for the baton, then mint until the channel closes (the consumer that holds the baton mints)."""
        connection = await self._connect()
        channel = await connection.channel()
        try:
            queue = minter_queue_name(self.exchange)
            await channel.queue_declare(queue, durable=True, arguments=MINTER_ARGUMENTS)
            await channel.basic_qos(prefetch_count=1)
            baton = asyncio.Event()

            async def on_baton(message: DeliveredMessage) -> None:
                baton.set()  # held unacked: the broker gives it to the next consumer when this one goes

            close_when_cancelled(channel, f"the minter queue {queue}")
            await channel.basic_consume(queue, on_baton)
            with contextlib.suppress(aiormq.exceptions.DeliveryError):  # nacked by max-length: a baton waits already
                await channel.basic_publish(b"baton", routing_key=queue)
            held = asyncio.ensure_future(baton.wait())
            await asyncio.wait([held, channel.closing], return_when=asyncio.FIRST_COMPLETED)
            held.cancel()
            if baton.is_set() and not channel.is_closed:
                self.minting = True
                log.info("minting rate-limit tokens for %s", ", ".join(f"{n} {r}" for n, r in RATES.limited().items()))
                await self._mint(channel)
        finally:
            # A consumer left behind on a channel no one watches would be handed the baton and sit on it.
            if not channel.is_closed:
                with contextlib.suppress(*ERRORS):
                    await channel.close()

    async def _mint(self, channel: aiormq.abc.AbstractChannel) -> None:
        owed: dict[str, float] = {}
        last = time.monotonic()
        while not channel.is_closed:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            elapsed, last = now - last, now
            for name, rate in RATES.limited().items():
                owed[name] = owed.get(name, 0.0) + elapsed * rate.per_s
                if owed[name] < 1:
                    continue
                queue = token_queue_name(self.exchange, name)
                ok = await channel.queue_declare(queue, durable=True, arguments=TOKEN_ARGUMENTS)
                mint, owed[name] = tokens_to_mint(rate, owed[name], ok.message_count or 0)
                for _ in range(mint):
                    await channel.basic_publish(b"", routing_key=queue)


def tokens_to_mint(rate: Rate, owed: float, ready: int) -> tuple[int, float]:
    """How many tokens to mint now, and what stays owed: the bucket never holds more than it may.

    `ready` tokens wait in the queue unclaimed. The bucket tops up to `burst`, or to what `PAY_BACK_S`
    is worth if that is more (a late tick is paid back). A longer stall of the minter (a broker that
    held its publishes, a paused process) is not: what the bucket cannot hold is dropped, so a stall
    never ends in a flood of runs.
    """
    whole = int(owed)
    room = max(max(rate.burst, math.ceil(rate.per_s * PAY_BACK_S)) - ready, 0)
    mint = min(whole, room)
    return mint, owed - whole if mint == whole else 0.0
