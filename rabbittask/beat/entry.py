"""Schedule entries: what to send and when, as pure time arithmetic (no clock, no broker).

A slot is the instant (epoch seconds, UTC) a tick is due. `every=` slots are multiples of the
interval counted from the Unix epoch, so every replica computes the same slots. `cron=` slots
come from croniter in the entry's time zone, corrected to what cron itself does when daylight
saving time starts or ends (Vixie cron, cronie):

* fixed-time entries (no `*` in the minute or hour field, e.g. `30 2 * * *`):
  a time the clock skips fires once, at the first instant after the change (03:00 local);
  a time the clock passes twice fires once, on its first pass.
* wildcard entries (`*` in the minute or hour field, e.g. `30 * * * *`, `*/15 2 * * *`):
  follow the wall clock: nothing fires in the skipped hour, and the repeated hour fires twice.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from rabbittask.errors import ConfigError

CatchUp = Literal["skip", "once", "all"]
CATCH_UP_POLICIES: tuple[str, ...] = get_args(CatchUp)

_ENTRY_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,199}$")  # no '@': tick ids are <name>@<slot>
_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


@dataclass(frozen=True)
class ScheduleEntry:
    """One periodic task: `app.schedule(name, task.s(...), cron=... | every=..., ...)` made it."""

    name: str
    task_name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    queue: str
    cron: str | None = None
    every_s: int | None = None
    tz: str = "UTC"
    expires_s: float | None = None
    catch_up: CatchUp = "skip"
    catch_up_limit: int = 100
    grace_s: float = 30.0

    def __post_init__(self) -> None:
        if not _ENTRY_NAME.match(self.name):
            raise ConfigError(
                f"schedule name {self.name!r} is not allowed: use letters, digits and _ . : - (max 200, no '@')"
            )
        if (self.cron is None) == (self.every_s is None):
            raise ConfigError(f"schedule {self.name!r}: give exactly one of cron= and every=")
        if self.every_s is not None and self.every_s < 1:
            raise ConfigError(f"schedule {self.name!r}: every= must be at least 1 second")
        if self.catch_up not in CATCH_UP_POLICIES:
            raise ConfigError(
                f"schedule {self.name!r}: catch_up={self.catch_up!r} is not a policy; use one of "
                f"{', '.join(CATCH_UP_POLICIES)}"
            )
        if self.catch_up_limit < 1:
            raise ConfigError(f"schedule {self.name!r}: catch_up_limit must be at least 1")
        if self.grace_s < 0:
            raise ConfigError(f"schedule {self.name!r}: grace_s must be >= 0 seconds")
        if self.expires_s is not None and self.expires_s <= 0:
            raise ConfigError(f"schedule {self.name!r}: expires must be a positive number of seconds")
        self.zone  # noqa: B018 - an unknown time zone fails at declaration, not at the first tick
        if self.cron is not None:
            _check_cron(self.name, self.cron)

    @cached_property
    def zone(self) -> ZoneInfo:
        """The entry's time zone."""
        try:
            return ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"schedule {self.name!r}: unknown time zone {self.tz!r}; use an IANA name such as "
                "'Europe/Berlin' or 'UTC'"
            ) from None

    @cached_property
    def expression(self) -> str:
        """The cron expression with @aliases expanded."""
        assert self.cron is not None
        return _ALIASES.get(self.cron.strip().lower(), self.cron.strip())

    @cached_property
    def fixed_time(self) -> bool:
        """True when neither the minute nor the hour field is a wildcard (cron's DST rules differ)."""
        minute, hour = self.expression.split()[:2]
        return not (minute.startswith("*") or hour.startswith("*"))

    def describe(self) -> str:
        """`cron '0 3 * * *' (Europe/Berlin)` or `every 30s`."""
        if self.cron is not None:
            return f"cron {self.cron!r} ({self.tz})"
        return f"every {_seconds_text(self.every_s or 0)}"

    def definition(self) -> dict[str, Any]:
        """The entry as data, for `rabbittask topology export`."""
        out: dict[str, Any] = {
            "name": self.name,
            "task": self.task_name,
            "queue": self.queue,
            "args": list(self.args),
            "kwargs": self.kwargs,
            "catch_up": self.catch_up,
            "grace_s": self.grace_s,
        }
        if self.cron is not None:
            out.update(cron=self.cron, tz=self.tz)
        else:
            out["every_s"] = self.every_s
        if self.catch_up == "all":
            out["catch_up_limit"] = self.catch_up_limit
        if self.expires_s is not None:
            out["expires_s"] = self.expires_s
        return out

    # -- slots ------------------------------------------------------------------------------------

    def next_after(self, t: float) -> float:
        """The first slot strictly after `t`."""
        if self.every_s is not None:
            return float((math.floor(t / self.every_s) + 1) * self.every_s)
        it = croniter(self.expression, datetime.fromtimestamp(t, self.zone))
        while True:
            slot = it.get_next(datetime).timestamp()
            if slot > t and self._keeps(slot):
                return float(slot)

    def slots(self, after: float, until: float) -> Iterator[float]:
        """Slots in (after, until], ascending."""
        slot = self.next_after(after)
        while slot <= until:
            yield slot
            slot = self.next_after(slot)

    def slots_back(self, until: float, after: float) -> Iterator[float]:
        """Slots in (after, until], descending (to find the latest missed ones without walking them all)."""
        if self.every_s is not None:
            slot = float(math.floor(until / self.every_s) * self.every_s)
            while slot > after:
                yield slot
                slot -= self.every_s
            return
        # croniter's get_prev is strict, so start a second late and drop what lies beyond `until`.
        it = croniter(self.expression, datetime.fromtimestamp(until + 1.0, self.zone))
        while True:
            slot = float(it.get_prev(datetime).timestamp())
            if slot <= after:
                return
            if slot <= until and self._keeps(slot):
                yield slot

    def _keeps(self, slot: float) -> bool:
        local = datetime.fromtimestamp(slot, self.zone)
        if self.fixed_time:
            # The repeated hour when DST ends: cron runs a fixed-time job on the first pass only.
            repeated = local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()
            return not repeated
        # croniter moves a time the clock skips to just after the gap; cron runs wildcard jobs by the
        # new wall clock, so a moved slot (whose local time no longer matches) does not fire.
        minutes, hours = self._wall_fields
        return (minutes is None or local.minute in minutes) and (hours is None or local.hour in hours)

    @cached_property
    def _wall_fields(self) -> tuple[frozenset[int] | None, frozenset[int] | None]:
        """The minutes and hours the expression allows (None: any)."""
        minutes, hours = croniter(self.expression).expanded[:2]
        return (
            None if "*" in minutes else frozenset(int(m) for m in minutes),
            None if "*" in hours else frozenset(int(h) for h in hours),
        )


def _check_cron(name: str, cron: str) -> None:
    expr = _ALIASES.get(cron.strip().lower(), cron.strip())
    fields = expr.split()
    if len(fields) != 5:
        raise ConfigError(
            f"schedule {name!r}: cron expression {cron!r} has {len(fields)} field(s); cron has 5 "
            "(minute hour day-of-month month day-of-week), e.g. '0 3 * * *'; use every= below a minute"
        )
    try:
        croniter(expr, datetime(2000, 1, 1, tzinfo=UTC)).get_next(datetime)
    except (CroniterError, ValueError, KeyError) as e:
        raise ConfigError(f"schedule {name!r}: invalid cron expression {cron!r}: {e}") from None


def every_seconds(name: str, every: timedelta | float | int) -> int:
    """`every=` as whole seconds, or a ConfigError saying what is accepted."""
    seconds = every.total_seconds() if isinstance(every, timedelta) else every
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 1 or seconds != int(seconds):
        raise ConfigError(
            f"schedule {name!r}: every={every!r} must be a whole number of seconds, at least 1 "
            "(a timedelta or a number)"
        )
    return int(seconds)


def seconds_of(name: str, what: str, value: timedelta | float | int | None) -> float | None:
    """An optional duration (timedelta or seconds) as seconds."""
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ConfigError(f"schedule {name!r}: {what}={value!r} must be seconds or a timedelta")
    return float(seconds)


def _seconds_text(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
