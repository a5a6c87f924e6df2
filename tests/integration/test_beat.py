"""Beat against a real broker: one active replica, takeovers that neither repeat nor skip, DST, expires."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from rabbittask import App
from rabbittask.beat import Beat, CatchUp, ScheduleEntry, tick_id
from rabbittask.beat.state import decode_state, state_queue_name
from tests import amqp, beats
from tests.apps.beat_app import make_app
from tests.waiting import assert_stays, wait_until

APP = "tests.apps.beat_app:app"
T0 = 1_700_000_000.0  # a frozen "now" (2023-11-14 22:13:20 UTC), far from the cron entry's 02:30


prefix = beats.prefix  # the fixture, used by name


class FakeClock:
    """A clock the test sets: `clock.now = ...`."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ticks(url: str, queue: str) -> list[str]:
    """The message ids in `queue`, in order (taken out of it)."""
    return [p.message_id for p, _ in amqp.get_all(url, queue)]


def every_second(*offsets: int) -> list[str]:
    return [tick_id("every-second", T0 + o) for o in offsets]


def test_one_replica_is_active_and_a_standby_takes_over_from_the_broker_state(prefix: str, broker_url: str) -> None:
    app = make_app(prefix, broker_url)
    clock = FakeClock(T0)

    async def main() -> None:
        a = Beat(app, clock=clock, identity="a")
        b = Beat(app, clock=clock, identity="b")
        # Given replica a holds the lock, b cannot take it
        assert await a.acquire()
        assert not await b.acquire()
        clock.now = T0 + 3.2
        await a.step()
        # When a goes away (its connection closes: the broker deletes the exclusive lock queue)
        await a.close()
        # Then b takes over, reads the state a left on the broker and goes on from there
        assert await b.acquire()
        assert b.done_until["every-second"] == T0 + 3
        clock.now = T0 + 5.5
        await b.step()
        await b.close()

    asyncio.run(main())
    assert ticks(broker_url, f"{prefix}.ticks") == every_second(1, 2, 3, 4, 5)
    [(_, body)] = amqp.get_all(broker_url, state_queue_name("rabbittask", app.name))  # exactly one state message
    state = decode_state(body)
    assert state.done_until["every-second"] == T0 + 5 and state.by == "b"


def test_ticks_carry_a_deterministic_id_their_slot_and_expiry(prefix: str, broker_url: str) -> None:
    app = make_app(prefix, broker_url, expires_s=60)
    clock = FakeClock(T0)

    async def main() -> None:
        beat = Beat(app, clock=clock)
        await beat.acquire()
        clock.now = T0 + 1.25
        await beat.step()
        await beat.close()

    asyncio.run(main())
    [(props, body)] = amqp.get_all(broker_url, f"{prefix}.ticks")
    # The message id is the task id: `<entry>@<slot>`, the same whichever replica sends it
    assert props.message_id == "every-second@2023-11-14T22:13:21Z" == tick_id("every-second", T0 + 1)
    assert props.type == "beat.tick" and props.delivery_mode == 2
    assert body == b'{"v":1,"args":[],"kwargs":{"label":"s"}}'
    assert props.headers["rt-schedule"] == "every-second"
    assert props.headers["rt-slot"] == "2023-11-14T22:13:21Z"
    assert props.headers["rt-fired-at"] == "2023-11-14T22:13:21.250+00:00"
    assert props.headers["rt-expires"] == "2023-11-14T22:14:21.250+00:00"
    assert props.expiration == "60000"


class Crash(Exception):
    """The scheduler process dies here (the test then closes its connection, as the kernel would)."""


class CrashingBeat(Beat):
    """A Beat that dies just before or just after the tick `crash_at` is confirmed."""

    def __init__(self, app: App, crash_at: str, when: str, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.crash_at, self.when = crash_at, when

    async def _send_tick(self, entry: ScheduleEntry, slot: float, now: float) -> bool:
        crashing = tick_id(entry.name, slot) == self.crash_at
        if crashing and self.when == "before-tick":
            raise Crash
        sent = await super()._send_tick(entry, slot, now)
        if crashing and self.when == "after-tick":
            raise Crash  # the tick is confirmed, the state not yet written
        return sent


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        # A crash before the tick is published: the successor sends it, once.
        ("before-tick", every_second(1, 2, 3, 4)),
        # The documented window: tick confirmed, state not written. The successor sends that slot again,
        # with the same message id (a task can see the duplicate); no slot is ever skipped.
        ("after-tick", every_second(1, 2, 3, 3, 4)),
    ],
)
def test_crash_window_between_tick_and_state_repeats_one_tick_with_the_same_id_and_never_skips(
    prefix: str, broker_url: str, when: str, expected: list[str]
) -> None:
    app = make_app(prefix, broker_url)
    clock = FakeClock(T0)

    async def main() -> None:
        a = CrashingBeat(app, tick_id("every-second", T0 + 3), when, clock=clock)
        b = Beat(app, clock=clock)
        assert await a.acquire()
        clock.now = T0 + 3.5
        with pytest.raises(Crash):
            await a.step()
        await a.close()
        assert await b.acquire()
        await b.step()
        clock.now = T0 + 4.5
        await b.step()
        await b.close()

    asyncio.run(main())
    assert ticks(broker_url, f"{prefix}.ticks") == expected


def dst_app(prefix: str, broker_url: str) -> App:
    app = App(f"beat-{prefix}", broker_url=broker_url)

    @app.task(queue=f"{prefix}.reports", name="beat.report")
    def report(day: str) -> str:
        return day

    app.schedule("fixed-0230", report.s(day="today"), cron="30 2 * * *", tz="Europe/Berlin")
    app.schedule("hourly-30", report.s(day="hour"), cron="30 * * * *", tz="Europe/Berlin")
    return app


@pytest.mark.parametrize(
    ("start", "end", "fixed", "hourly"),
    [
        # Spring forward, 2025-03-30: 02:00 CET -> 03:00 CEST. 02:30 does not exist: the fixed-time entry fires
        # once right after the change (03:00 CEST = 01:00Z); the hourly entry skips it (01:30 CET, 03:30 CEST).
        (
            "2025-03-29T23:45:00Z",
            "2025-03-30T03:15:00Z",
            ["2025-03-30T01:00:00Z"],
            ["2025-03-30T00:30:00Z", "2025-03-30T01:30:00Z", "2025-03-30T02:30:00Z"],
        ),
        # Fall back, 2025-10-26: 03:00 CEST -> 02:00 CET. 02:30 happens twice: the fixed-time entry fires on the
        # first pass only (02:30 CEST = 00:30Z); the hourly entry fires on both (00:30Z and 01:30Z).
        (
            "2025-10-25T23:45:00Z",
            "2025-10-26T03:15:00Z",
            ["2025-10-26T00:30:00Z"],
            ["2025-10-26T00:30:00Z", "2025-10-26T01:30:00Z", "2025-10-26T02:30:00Z"],
        ),
    ],
    ids=["spring-forward", "fall-back"],
)
def test_cron_at_0230_berlin_on_the_dst_days_fires_as_documented(
    prefix: str, broker_url: str, start: str, end: str, fixed: list[str], hourly: list[str]
) -> None:
    from rabbittask.beat.state import parse_time

    app = dst_app(prefix, broker_url)
    clock = FakeClock(parse_time(start))

    async def main() -> None:
        # The scheduler runs on a frozen clock that the test moves to each next slot, as the real loop sleeps.
        beat = Beat(app, clock=clock)
        assert await beat.acquire()
        for _ in range(100):
            wait_s = await beat.step()
            if clock.now + wait_s > parse_time(end):
                break
            clock.now += wait_s
        await beat.close()

    asyncio.run(main())
    sent = ticks(broker_url, f"{prefix}.reports")
    assert [i.split("@")[1] for i in sent if i.startswith("fixed-0230@")] == fixed
    assert [i.split("@")[1] for i in sent if i.startswith("hourly-30@")] == hourly


async def run_beat_for(app: App, seconds: float) -> int:
    """Run a real-clock scheduler in this process for `seconds`; return the ticks it sent."""
    beat = Beat(app, poll_s=0.2)
    task = asyncio.ensure_future(beat.run())
    await asyncio.sleep(seconds)
    beat.stop()
    await task
    return beat.ticks_sent


def ledger_lines(tmp_path: Path, prefix: str) -> list[str]:
    path = tmp_path / prefix
    return path.read_text().splitlines() if path.exists() else []


def test_a_tick_no_worker_started_in_time_is_not_run_late(
    prefix: str, broker_url: str, worker_factory: Any, tmp_path: Path
) -> None:
    app = make_app(prefix, broker_url, expires_s=1.0)
    # Given ticks that expire 1 s after they are sent, and no worker running
    sent = asyncio.run(run_beat_for(app, 2.6))
    assert sent >= 2
    time.sleep(1.5)
    # When a worker starts after they expired
    w = worker_factory(APP, prefix=prefix, env={"RT_TEST_EXPIRES_S": "1"})
    w.wait_for_log("consuming from")
    # Then none of them runs: the broker dead-letters them with reason "expired"
    amqp.wait_depth(broker_url, f"{prefix}.ticks.dlq", sent, timeout_s=10)
    dead = amqp.get_all(broker_url, f"{prefix}.ticks.dlq")
    assert {p.headers["x-death"][0]["reason"] for p, _ in dead} == {"expired"}
    assert all(p.message_id.startswith("every-second@") for p, _ in dead)
    assert_stays(lambda: ledger_lines(tmp_path, prefix) == [], 0.5, "no expired tick runs")
    # And a tick sent while the worker runs is run (the worker would have run the others in time)
    asyncio.run(run_beat_for(app, 1.6))
    wait_until(lambda: ledger_lines(tmp_path, prefix), 10, "a tick runs")
    assert ledger_lines(tmp_path, prefix)[0] == "ran s"


def test_ticks_missed_while_no_scheduler_ran_follow_each_entrys_catch_up_policy(prefix: str, broker_url: str) -> None:
    app = App(f"beat-{prefix}", broker_url=broker_url)

    @app.task(queue=f"{prefix}.ticks", name="beat.tick")
    def tick(label: str) -> None: ...

    policies: tuple[CatchUp, ...] = ("skip", "once", "all")
    for policy in policies:
        app.schedule(policy, tick.s(label=policy), every=10, catch_up=policy, catch_up_limit=5)
    clock = FakeClock(T0)

    async def main() -> None:
        # Given a scheduler that saw the entries at T0 and then stopped
        first = Beat(app, clock=clock)
        assert await first.acquire()
        await first.close()
        # When the next one starts 300 s later (grace 30 s: slots up to T0+270 were missed)
        clock.now = T0 + 300
        second = Beat(app, clock=clock)
        assert await second.acquire()
        await second.step()
        await second.close()

    asyncio.run(main())
    sent = ticks(broker_url, f"{prefix}.ticks")
    on_time = [280, 290, 300]  # within the grace; T0 is itself a multiple of 10 s from the epoch
    assert [i for i in sent if i.startswith("skip@")] == [tick_id("skip", T0 + s) for s in on_time]
    assert [i for i in sent if i.startswith("once@")] == [tick_id("once", T0 + s) for s in [270, *on_time]]
    assert [i for i in sent if i.startswith("all@")] == [
        tick_id("all", T0 + s) for s in [230, 240, 250, 260, 270, *on_time]
    ]
