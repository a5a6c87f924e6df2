"""`app.control`: broadcast a command to every worker child and gather the answers; revoke tasks.

A broadcast goes to the `<exchange>.control` fanout exchange with `reply_to` set to direct reply-to;
every child answers on it. Meanwhile the caller reads the last few heartbeats of the presence
stream (roster.py) to know who should answer: a child that was alive a moment ago and stays silent
is reported `missing`, not left out. The gathering ends at the timeout, or earlier once every
child of the roster has answered.

A revoke is a confirmed append to the `<exchange>.revoked` stream, which every child follows (and
reads from the start of the retention window when it starts), then a broadcast so running children
act at once. Every method has an async twin (`aping`, `arevoke`, ...); the sync ones run it on a
private event loop.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import aiormq
import aiormq.abc
from aiormq.abc import DeliveredMessage

from rabbittask.amqp.connect import connect
from rabbittask.amqp.link import close_quietly
from rabbittask.control.rates import parse_rate
from rabbittask.control.roster import Roster
from rabbittask.control.wire import BROADCASTS, command_body, outgoing
from rabbittask.errors import ControlError
from rabbittask.topology import control_exchange_name, revoked_stream_name
from rabbittask.topology import control_stream_arguments as stream_arguments

if TYPE_CHECKING:
    from rabbittask.app import App

T = TypeVar("T")
REPLY_TO = "amq.rabbitmq.reply-to"
DEFAULT_TIMEOUT_S = 1.0


@dataclass(slots=True)
class Replies:
    """The answers to one broadcast: `replies` by worker child (`host:pid`), and who was expected but silent."""

    command: str
    replies: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # children that answered they could not
    supervisors: dict[str, str] = field(default_factory=dict)  # child -> its worker's `host:pid`
    missing: list[str] = field(default_factory=list)  # children alive a moment ago that did not answer in time

    def as_dict(self) -> dict[str, Any]:
        """As plain data (what `rabbittask inspect --json` prints)."""
        return {
            "command": self.command,
            "replies": self.replies,
            "errors": self.errors,
            "workers": self.supervisors,
            "missing": self.missing,
        }


class Inspect:
    """`app.control.inspect()`: ask every worker child (or `destination`) what it does."""

    def __init__(self, control: Control, timeout_s: float, destination: Sequence[str] | None) -> None:
        self._control, self._timeout_s, self._destination = control, timeout_s, destination

    def _ask(self, command: str) -> Replies:
        return self._control.broadcast(command, timeout_s=self._timeout_s, destination=self._destination)

    def ping(self) -> Replies:
        """Every child answers "pong"."""
        return self._ask("ping")

    def active(self) -> Replies:
        """The tasks running now: id, name, args (truncated), started at, runtime."""
        return self._ask("active")

    def scheduled(self) -> Replies:
        """Messages a child holds that have not started yet (prefetched, waiting for a task thread)."""
        return self._ask("scheduled")

    def registered(self) -> Replies:
        """The task names each child runs."""
        return self._ask("registered")

    def stats(self) -> Replies:
        """pid, uptime, tasks done and failed, RSS, prefetch, queues of each child."""
        return self._ask("stats")

    def queues(self) -> Replies:
        """The queues each child consumes, with their type."""
        return self._ask("queues")


class Control:
    """The control plane of `app`: inspect, ping and revoke, over RabbitMQ alone."""

    def __init__(self, app: App) -> None:
        self.app = app

    def inspect(self, timeout: float = DEFAULT_TIMEOUT_S, destination: Sequence[str] | None = None) -> Inspect:
        """An `Inspect` asking every child (or the workers `destination` names, `host:pid`) within `timeout` s."""
        return Inspect(self, timeout, destination)

    def ping(self, timeout: float = DEFAULT_TIMEOUT_S, destination: Sequence[str] | None = None) -> Replies:
        """Ask every worker child to answer; `missing` names the ones alive a moment ago that did not."""
        return self.broadcast("ping", timeout_s=timeout, destination=destination)

    async def aping(self, timeout: float = DEFAULT_TIMEOUT_S, destination: Sequence[str] | None = None) -> Replies:
        """Async twin of `ping`."""
        return await self.abroadcast("ping", timeout_s=timeout, destination=destination)

    def pool_grow(self, n: int = 1, *, destination: Sequence[str] | None = None) -> Replies:
        """Start `n` more children in every worker (or those `destination` names), within `--autoscale` bounds."""
        return self.broadcast("pool_grow", arguments={"n": n}, destination=destination)

    def pool_shrink(self, n: int = 1, *, destination: Sequence[str] | None = None) -> Replies:
        """Retire `n` children (idle ones first) in every worker (or those `destination` names), at least 1 stays."""
        return self.broadcast("pool_shrink", arguments={"n": n}, destination=destination)

    def broadcast(
        self,
        command: str,
        *,
        arguments: Mapping[str, Any] | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        destination: Sequence[str] | None = None,
    ) -> Replies:
        """Send `command` to every child and gather the answers for `timeout_s` seconds."""
        return _run(lambda: self.abroadcast(command, arguments=arguments, timeout_s=timeout_s, destination=destination))

    async def abroadcast(
        self,
        command: str,
        *,
        arguments: Mapping[str, Any] | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        destination: Sequence[str] | None = None,
    ) -> Replies:
        """Async twin of `broadcast`."""
        _check_command(command, arguments or {}, timeout_s)
        settings = self.app.settings
        replies = Replies(command)
        connection = await connect(settings, "control")
        try:
            channel = await connection.channel()
            await channel.exchange_declare(
                control_exchange_name(settings.exchange), exchange_type="fanout", durable=True
            )
            roster = Roster(settings, destination)
            await roster.start(connection)
            done = asyncio.Event()

            def on_reply(message: DeliveredMessage) -> None:
                try:
                    data = json.loads(message.body)
                    who, ok = str(data["worker"]), bool(data.get("ok"))
                except (ValueError, KeyError, TypeError):
                    return
                replies.supervisors[who] = f"{data.get('host', '?')}:{data.get('ppid', '?')}"
                if ok:
                    replies.replies[who] = data.get("reply")
                else:
                    replies.errors[who] = str(data.get("error", ""))
                if roster.all_answered(set(replies.replies) | set(replies.errors)):
                    done.set()

            async def on_message(message: DeliveredMessage) -> None:
                on_reply(message)

            await channel.basic_consume(REPLY_TO, on_message, no_ack=True)
            body, props = outgoing(
                settings,
                command,
                command_body(command, arguments or {}, destination),
                reply_to=REPLY_TO,
                expiration=str(int(timeout_s * 1000)),  # a child that comes back later must not answer a stale one
            )
            await channel.basic_publish(body, exchange=control_exchange_name(settings.exchange), properties=props)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and not done.is_set():
                await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
                if roster.settled() and roster.all_answered(set(replies.replies) | set(replies.errors)):
                    break
            await roster.stop()
            answered = set(replies.replies) | set(replies.errors)
            replies.missing = sorted(w for w in roster.expected() if w not in answered)
            for child, supervisor in roster.supervisors().items():
                replies.supervisors.setdefault(child, supervisor)
        except aiormq.exceptions.AMQPError as e:
            raise ControlError(f"control command {command!r} failed on the broker: {e}") from None
        finally:
            await close_quietly(connection, "control")
        return replies

    def rate_limit(self, task_name: str, rate: str | None, *, burst: int | None = None) -> None:
        """Set the rate limit of `task_name` across all workers now (`"10/s"`; None: no limit), for the window.

        Kept as a record of the control stream: workers started later and the next minter apply it too.
        """
        _run(lambda: self.arate_limit(task_name, rate, burst=burst))

    async def arate_limit(self, task_name: str, rate: str | None, *, burst: int | None = None) -> None:
        """Async twin of `rate_limit`."""
        if task_name not in self.app.tasks:
            raise ControlError(f"rate_limit: app {self.app.name!r} has no task {task_name!r}")
        if rate is not None:
            try:
                parse_rate(rate, burst)
            except ValueError as e:
                raise ControlError(f"rate_limit of {task_name!r}: {e}") from None
        record = {"rate_limit": {"task": task_name, "rate": rate, "burst": burst}, "ts": time.time()}
        await self._append("rate_limit", record, f"the rate limit of {task_name!r}")

    def revoke(self, task_id: str | Sequence[str], *, terminate: bool = False) -> None:
        """Revoke task(s): one that has not started never runs, on any worker, for `revoke_retention_s`.

        `terminate=True` also stops a run under way: an async task is cancelled; a sync task gets
        `TaskRevoked` at its next `ctx.check_revoked()`, and its child is replaced after `terminate_grace_s`.
        Returns once the revocation is confirmed by the broker.
        """
        _run(lambda: self.arevoke(task_id, terminate=terminate))

    async def arevoke(self, task_id: str | Sequence[str], *, terminate: bool = False) -> None:
        """Async twin of `revoke`."""
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        bad = [i for i in ids if not isinstance(i, str) or not i]
        if bad or not ids:
            raise ControlError(f"revoke takes task ids (non-empty strings), not {bad or ids!r}")
        record = {"ids": ids, "terminate": terminate, "ts": time.time()}
        await self._append("revoke", record, f"the revocation of {', '.join(ids)}")

    async def _append(self, command: str, record: dict[str, Any], what: str) -> None:
        """Append `record` to the control stream, confirmed, then broadcast it (running children act at once)."""
        settings = self.app.settings
        stream = revoked_stream_name(settings.exchange)
        connection = await connect(settings, "control")
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            try:
                await channel.queue_declare(
                    stream, durable=True, arguments=stream_arguments(settings.revoke_retention_s)
                )
            except aiormq.exceptions.ChannelPreconditionFailed as e:
                raise ControlError(
                    f"the revocation stream {stream!r} exists with another retention than revoke_retention_s="
                    f"{settings.revoke_retention_s:g} ({e}); use the same setting everywhere, or delete the stream"
                ) from None
            body, props = outgoing(settings, command, record, delivery_mode=2)
            confirm = await channel.basic_publish(body, routing_key=stream, properties=props, mandatory=True)
            if not isinstance(confirm, aiormq.spec.Basic.Ack):
                raise ControlError(f"the broker did not confirm {what}; nothing was changed")
            body, props = outgoing(settings, command, command_body(command, record, None))
            await channel.exchange_declare(
                control_exchange_name(settings.exchange), exchange_type="fanout", durable=True
            )
            await channel.basic_publish(body, exchange=control_exchange_name(settings.exchange), properties=props)
        except aiormq.exceptions.AMQPError as e:
            raise ControlError(f"{what} failed on the broker: {e}") from None
        finally:
            await close_quietly(connection, "control")


def _check_command(command: str, arguments: Mapping[str, Any], timeout_s: float) -> None:
    """Refuse, saying why, a command no child would understand."""
    if command not in BROADCASTS:
        raise ControlError(f"unknown control command {command!r}; known: {', '.join(BROADCASTS)}")
    n = arguments.get("n", 1)
    if command.startswith("pool_") and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ControlError(f"{command} takes a whole number of children of 1 or more, not {n!r}")
    if timeout_s <= 0:
        raise ControlError(f"timeout must be more than 0 s, not {timeout_s:g}")


def _run(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code: here, or on a private thread when a loop runs here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(make()))
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            error.append(e)

    thread = threading.Thread(target=target, name="rabbittask-control")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
