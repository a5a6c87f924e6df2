"""Retry policies and delays: back-off math, jitter, and the headers of a delayed or retried message.

A retry is a new copy of the message, published into the broker's delay ladder (see
`delays.delay_entry`) and confirmed before the failed delivery is acked: a crash in between can
duplicate a run, never lose one. Nothing here touches the network; the worker and the publishers
call these functions.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rabbittask.delays import MAX_DELAY_MS
from rabbittask.errors import ConfigError
from rabbittask.message import H_ETA, H_EXPIRES, format_time

if TYPE_CHECKING:
    from rabbittask.settings import Settings

_MAX_DOUBLINGS = 64  # 2**64 times any base is far beyond every cap; keeps the float math finite


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a task retries: every field is also an `@app.task` option and (but `autoretry_for`) a setting."""

    max_retries: int | None = 3
    retry_backoff: bool | float = True
    retry_backoff_max: float = 600.0
    retry_jitter: bool = True
    retry_delay: float = 1.0
    autoretry_for: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if self.max_retries is not None and (not isinstance(self.max_retries, int) or self.max_retries < 0):
            raise ConfigError(f"max_retries must be an integer >= 0 or None, got {self.max_retries!r}")
        if isinstance(self.retry_backoff, int | float) and self.retry_backoff < 0:
            raise ConfigError(f"retry_backoff must be True, False or seconds >= 0, got {self.retry_backoff!r}")
        if self.retry_backoff_max <= 0 or self.retry_delay < 0:
            raise ConfigError("retry_backoff_max must be > 0 and retry_delay >= 0 (seconds)")
        bad = [t for t in self.autoretry_for if not (isinstance(t, type) and issubclass(t, BaseException))]
        if bad:
            raise ConfigError(f"autoretry_for takes exception classes, got {bad!r}")

    def delay_s(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        """The wait before retry number `retry` (1 = the first retry), in seconds.

        Exponential: base * 2**(retry-1), base = `retry_backoff` seconds (True: 1 s), capped at
        `retry_backoff_max`; constant `retry_delay` when `retry_backoff` is False. With jitter the
        wait is drawn uniformly from [half, all] of that: spread out, but never a hot loop.
        """
        if self.retry_backoff is False or self.retry_backoff == 0:
            wait = self.retry_delay
        else:
            base = 1.0 if self.retry_backoff is True else float(self.retry_backoff)
            wait = base * 2.0 ** min(max(retry - 1, 0), _MAX_DOUBLINGS)
        wait = min(wait, self.retry_backoff_max)
        if self.retry_jitter:
            wait = wait / 2 + rand() * wait / 2
        return wait

    def retries_on(self, exc: BaseException) -> bool:
        """True if `exc` is one of the failures this task retries without being asked."""
        return bool(self.autoretry_for) and isinstance(exc, self.autoretry_for)


RETRY_OPTIONS = frozenset(f.name for f in fields(RetryPolicy))


def policy_for(
    settings: Settings, app_autoretry_for: tuple[type[BaseException], ...], options: Mapping[str, Any]
) -> RetryPolicy:
    """The policy of one task: its own options over the app's settings."""
    values: dict[str, Any] = {
        name: getattr(settings, name) for name in RETRY_OPTIONS - {"autoretry_for"} if hasattr(settings, name)
    }
    values["autoretry_for"] = app_autoretry_for
    values.update(options)
    if not isinstance(values["autoretry_for"], tuple):
        values["autoretry_for"] = tuple(values["autoretry_for"])
    return RetryPolicy(**values)


def due_in_ms(countdown: float | None = None, eta: datetime | None = None, now: float | None = None) -> float:
    """How long from now a message with this countdown (seconds) or eta is due; 0 if now or past."""
    if countdown is not None and eta is not None:
        raise ConfigError("give countdown or eta, not both")
    if countdown is not None:
        return max(0.0, countdown * 1000.0)
    if eta is not None:
        return max(0.0, (eta.timestamp() - (time.time() if now is None else now)) * 1000.0)
    return 0.0


def schedule_headers(delay_ms: float, expires: float | datetime | None, now: float) -> dict[str, Any]:
    """Headers a delayed or expiring message needs: `rt-expires`, and `rt-eta` past one ladder pass."""
    headers: dict[str, Any] = {}
    if expires is not None:
        at = expires.timestamp() if isinstance(expires, datetime) else now + float(expires)
        headers[H_EXPIRES] = format_time(at)
    if delay_ms > MAX_DELAY_MS:
        # The ladder delivers after MAX_DELAY_MS; the worker sees rt-eta still ahead and sends it round again.
        headers[H_ETA] = format_time(now + delay_ms / 1000.0)
    return headers
