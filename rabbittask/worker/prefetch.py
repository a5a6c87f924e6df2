"""Adaptive prefetch: a child holds many messages while its tasks prove short, few once one runs long.

A small prefetch makes a drain slow (every few messages the consumer waits for the broker, and the
broker works three times harder per message); a large one lets a long task hold a backlog of short
ones hostage in its child's buffer (Celery's head-of-line blocking). So, unless the prefetch is
pinned, a child starts at the app's prefetch (`FLOOR`, 16) and:

* **grows** x4 (16, 64, 256, 1024 at most) after each window of `level` settled tasks whose run
  time, times 4, stays under `HOLD_S`: a full buffer at the next level holds at most about 0.1 s of
  work like it. No-op tasks reach 1024 after 336 tasks;
* **steps down** x4 (not below the floor) after a window whose run time exceeds four times `HOLD_S`;
* **sheds** when a sync task has run longer than `LONG_S` while every task thread is busy (checked
  every `TICK_S`): the child stops consuming and the messages waiting for a thread go back to the
  queue, where other children take them (with one child, they wait in the queue instead of in its
  buffer). A message is handed back this way at most once (only a first delivery is), because a
  quorum queue counts every return against its delivery limit. The next settled task resumes
  consuming at a prefetch of 1, and it grows again from there. At a prefetch of 1 with nothing
  waiting it stays put: the running task holds the consumer's only slot (one long task after
  another runs like Celery's `-O fair`, without a consume and cancel per task).

RabbitMQ applies `basic.qos` only to consumers created after it, so a change of level re-consumes:
a new consumer with the new prefetch first, then the old one is cancelled. Deliveries the old one
holds stay valid on the channel and are acked as usual.

Pinned (a fixed prefetch): `--prefetch N`, an explicit app `prefetch` setting, `--max-tasks-per-child`
(its budget caps the prefetch), partitioned queues and single-active-consumer queues (a new consumer would queue
behind the active one; ordered consumption needs its prefetch to stay put). `adaptive_allowed` says.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rabbittask.app import App

log = logging.getLogger(__name__)

CEILING = 1024  # the largest prefetch it grows to (a raw consumer's 1000 is where a drain stops gaining)
GROWTH = 4
HOLD_S = 0.1  # work a full buffer may hold, judged from the run time of the last window
LONG_S = 0.1  # a sync task running longer than this, with every thread busy, sheds the buffer
TICK_S = 0.05  # how often running tasks are looked at
STALLED = 0  # while a long task holds every thread: not consuming (basic.qos 0 would mean unlimited)


def adaptive_allowed(app: App, queues: list[str], *, pinned: int | None, max_tasks: int) -> bool:
    """True when the prefetch of a child consuming `queues` adapts (see the module doc for what pins it)."""
    if pinned is not None or max_tasks or "prefetch" in app.settings.model_fields_set:
        return False
    # A single-active-consumer queue, and the partitions of a partition_by / fair_by queue (taken one
    # message at a time on the same channel), keep their prefetch: a re-consume would race their basic.qos.
    specs = [app.queues[q] for q in queues if q in app.queues]
    return not any(s.single_active_consumer or s.partitions for s in specs)


class AdaptivePrefetch:
    """Chooses a child's prefetch from the run times of what it settles; `resize` applies a new level.

    `shed()` hands back what waits for a thread and returns how many went back;
    `stalled_since()` is when the youngest task of a fully busy thread pool started (None: a thread is free).
    """

    def __init__(
        self,
        floor: int,
        *,
        resize: Callable[[int], None],
        shed: Callable[[], int],
        stalled_since: Callable[[], float | None],
        ceiling: int = CEILING,
    ) -> None:
        self.floor = floor
        self.ceiling = max(floor, ceiling)
        self.level = floor
        self.sheds = 0
        self._resize = resize
        self._shed = shed
        self._stalled_since = stalled_since
        self._seen = 0
        self._work_s = 0.0  # run time of the current window's tasks
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Begin looking at running tasks every `TICK_S` (on the running loop)."""
        self._timer = asyncio.get_running_loop().call_later(TICK_S, self._tick)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def observe(self, runtime_s: float) -> None:
        """Count a settled task (the hot path: two additions unless a window ends)."""
        self._seen += 1
        self._work_s += runtime_s
        if self._seen >= self.level:
            self._window_ended()

    def _window_ended(self) -> None:
        # A window is `level` tasks: its work is what a full buffer held (a long outlier is the stall's job).
        work_s, level = self._work_s, self.level
        self._seen, self._work_s = 0, 0.0
        if level == STALLED:
            self._set(1, "a task thread is free again")
            return
        grown = min(level * GROWTH, self.ceiling)
        if grown > level and work_s * GROWTH <= HOLD_S:
            self._set(grown, f"tasks are short ({work_s / level * 1000:.2f} ms on average)")
        elif level > self.floor and work_s > HOLD_S * GROWTH:
            self._set(max(self.floor, level // GROWTH), f"tasks got longer ({work_s / level * 1000:.1f} ms on average)")

    def _tick(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(TICK_S, self._tick)
        since = self._stalled_since()
        if since is None or time.monotonic() - since <= LONG_S:
            return
        handed = self._shed()  # stalled already: what was on the wire before the cancel-ok came since
        if self.level > 1 or (self.level == 1 and handed):  # at 1 with nothing waiting, nothing more comes
            self.sheds += 1
            self._seen, self._work_s = 0, 0.0
            why = f"a task runs longer than {LONG_S * 1000:.0f} ms; {handed} waiting message(s) handed back"
            self._set(STALLED, why)
        elif handed:
            log.info("%d more waiting message(s) handed back (came before the consumer was cancelled)", handed)

    def _set(self, level: int, why: str) -> None:
        log.info("prefetch %d -> %d: %s", self.level, level, why)
        self.level = level
        self._resize(level)
