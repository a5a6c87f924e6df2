"""Periodic tasks: schedule entries (`app.schedule`) and the `rabbittask beat` scheduler.

    entry.py      ScheduleEntry: cron / every slots, time zones, cron's DST rules (pure)
    plan.py       which slots to fire now: grace and the catch-up policy (pure)
    state.py      names of the lock and state queues, the state message, tick ids and headers
    scheduler.py  Beat: the election on an exclusive queue, confirmed ticks, broker-held state
    build.py      app.schedule(...) arguments checked and turned into a ScheduleEntry

docs/scheduling.md explains the guarantees and the crash windows.
"""

from __future__ import annotations

from rabbittask.beat.entry import CatchUp, ScheduleEntry
from rabbittask.beat.scheduler import Beat, Clock
from rabbittask.beat.state import tick_id

__all__ = ["Beat", "CatchUp", "Clock", "ScheduleEntry", "tick_id"]
