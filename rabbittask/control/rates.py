"""Global rate limits: what `rate_limit="100/s"` means, and the rates in force in this process.

A limit holds across every worker together, on RabbitMQ alone: one elected child mints tokens at
the rate into a queue per limited task (`<exchange>.rate.<task>`), and a child takes a token before
each run of a limited task (worker/rates.py). The bucket holds at most `burst` tokens, so after an
idle period at most `burst` runs start at once. A rate set at run time
(`app.control.rate_limit(...)`) is a record of the control stream, so children started later, and
the next minter, know it too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator

PER_S = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"^\s*(?P<count>\d+(?:\.\d+)?)\s*(?:/\s*(?P<unit>[smh]))?\s*$")


@dataclass(frozen=True, slots=True)
class Rate:
    """`per_s` runs a second across all workers, at most `burst` at once after an idle period."""

    text: str
    per_s: float
    burst: int = 1

    def __str__(self) -> str:
        return self.text if self.burst == 1 else f"{self.text} (burst {self.burst})"


def parse_rate(text: str, burst: int | None = None) -> Rate:
    """`"100/s"`, `"10/m"`, `"5/h"` (a bare number is per second); `ValueError` saying what is allowed."""
    match = _RATE.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            f"rate limit {text!r} is not a rate: use '<count>/s', '<count>/m' or '<count>/h', e.g. '100/s'"
        )
    per_s = float(match["count"]) / PER_S[match["unit"] or "s"]
    if per_s <= 0:
        raise ValueError(f"rate limit {text!r} is 0: leave rate_limit unset for no limit")
    if burst is not None and burst < 1:
        raise ValueError(f"rate limit burst must be 1 or more, not {burst}")
    return Rate(text.strip(), per_s, burst or 1)


def _check(text: str | None) -> str | None:
    if text is not None:
        parse_rate(text)
    return text


RateText = Annotated[str | None, AfterValidator(_check)]
"""A `rate_limit` option: checked where it is declared."""


class Rates:
    """The rate limits in force in this process: declared ones, overridden by run-time records (None: unlimited)."""

    def __init__(self) -> None:
        self.declared: dict[str, Rate] = {}
        self.overrides: dict[str, tuple[float, Rate | None]] = {}  # task -> (set at, rate)

    def of(self, task_name: str) -> Rate | None:
        override = self.overrides.get(task_name)
        if override is not None:
            return override[1]
        return self.declared.get(task_name)

    def override(self, task_name: str, rate: Rate | None, at: float) -> None:
        """Apply a run-time record unless a later one is applied already."""
        old = self.overrides.get(task_name)
        if old is None or old[0] <= at:
            self.overrides[task_name] = (at, rate)

    def limited(self) -> dict[str, Rate]:
        """Every task limited now, with its rate."""
        names = set(self.declared) | set(self.overrides)
        return {n: r for n in sorted(names) if (r := self.of(n)) is not None}


RATES = Rates()
