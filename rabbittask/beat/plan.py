"""Which slots of an entry to fire now: a pure function of the entry, its state and the time.

`done_until` (from the broker-held state) says every slot up to that instant was handled. Slots
at most `grace_s` late are on time: a takeover or a broker hiccup delayed them, and they always
fire, in order. Older ones were missed while no scheduler ran, and the entry's `catch_up` policy
decides: `skip` none, `once` the latest, `all` the latest `catch_up_limit` of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice

from rabbittask.beat.entry import ScheduleEntry

COUNT_CAP = 10_000  # how far skipped slots are counted for the log line, not a limit on anything


@dataclass(frozen=True, slots=True)
class Due:
    """Slots to fire now (ascending) and the missed ones the catch-up policy drops."""

    fire: list[float] = field(default_factory=list)
    skipped: int = 0
    skipped_more: bool = False  # more than `skipped` were dropped (counting stopped at COUNT_CAP)
    done_until: float | None = None  # the state once `fire` is published; None: unchanged


def due(entry: ScheduleEntry, done_until: float, now: float) -> Due:
    """The slots in (done_until, now] to fire at `now`, after the catch-up policy."""
    if now <= done_until:
        return Due()
    cutoff = now - entry.grace_s
    on_time = list(entry.slots(max(done_until, cutoff), now))
    if done_until >= cutoff:
        return Due(on_time, done_until=on_time[-1] if on_time else None)
    keep = {"skip": 0, "once": 1, "all": entry.catch_up_limit}[entry.catch_up]
    older = entry.slots_back(cutoff, done_until)
    missed = list(islice(older, keep))[::-1]
    skipped = sum(1 for _ in islice(older, COUNT_CAP))
    more = skipped == COUNT_CAP and next(older, None) is not None
    fire = missed + on_time
    # Everything up to the cutoff is handled now (fired or dropped by the policy).
    return Due(fire, skipped, more, max(fire[-1], cutoff) if fire else cutoff)
