"""The cases of the table: each pairs a rabbittask row with its raw references and a target."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench import celery_rows, raw, rt, startup
from bench.config import Counts
from bench.row import Measurement, RowContext

RowFn = Callable[[RowContext], Measurement]
RT = "rabbittask"
EVENTS_OFF = f"{RT} B1 events off"  # a reference row: its ratio is what events cost (the target: within 10%)
HISTORY_OFF = f"{RT} B1 history off"  # the reference of row H: what the history stream costs (within 5%)
BEST_FLAGS = f"{RT} --prefetch 1000"  # a reference row: the default (adaptive) prefetch against the best pinned one
UVLOOP = f"{RT} --loop uvloop"  # a reference row: the same worker on uvloop (a ratio under 1: uvloop drains faster)
TOTAL_RSS_TARGET_MB = 60.0  # supervisor + 1 child (B1)
CHILD_PSS_TARGET_MB = 20.0


@dataclass(frozen=True)
class Case:
    key: str
    title: str
    count: Callable[[Counts], int]
    rabbittask: RowFn
    references: tuple[tuple[str, RowFn], ...]  # the first is the one the target is measured against
    target: float  # ratio rabbittask / first reference
    higher_is_better: bool = True  # False: a latency, the ratio must stay at or below the target
    extra_s: float | None = None  # a start-up time: rabbittask may take at most this many seconds more

    @property
    def unit(self) -> str:
        if self.extra_s is not None:
            return "s"
        return "msg/s" if self.higher_is_better else "ms"

    @property
    def target_text(self) -> str:
        if self.extra_s is not None:
            return f"<= +{self.extra_s:g} s" if self.target <= 0 else f"<= {self.target:g} s"
        return f">= {self.target:.2f}x" if self.higher_is_better else f"p50 <= {self.target:.2f}x"

    def passes(self, value: float, reference: float) -> bool:
        if self.extra_s is not None:  # an absolute bound (target > 0), else one relative to the reference
            return value <= self.target if self.target > 0 else value - reference <= self.extra_s
        ratio = value / reference
        return ratio >= self.target if self.higher_is_better else ratio <= self.target

    def impls(self) -> list[tuple[str, RowFn]]:
        return [*self.references, (RT, self.rabbittask)]


CASES = [
    Case(
        "A1",
        "sequential .delay() (confirm each)",
        lambda c: c.sequential,
        rt.a1_delay,
        (("raw pika", raw.a1_pika),),
        0.95,
    ),
    Case(
        "A2",
        "app.batch() enqueue",
        lambda c: c.batch,
        rt.a2_batch,
        (("raw aio-pika", raw.a2_aio_pika), ("raw aiormq", raw.a2_aiormq)),
        1.0,
    ),
    Case(
        "B1",
        "drain pre-queued no-ops, -c 1, no flags, late ack",
        lambda c: c.batch,
        rt.drain_with(1),
        (
            ("raw aiormq", raw.drain_with("aiormq", 1)),
            ("raw aio-pika", raw.drain_with("aio-pika", 1)),
            (BEST_FLAGS, rt.drain_with(1, prefetch=1000)),
            (EVENTS_OFF, rt.drain_with(1, events=False)),
            (UVLOOP, rt.drain_with(1, loop="uvloop")),
        ),
        0.9,
    ),
    Case(
        "H",
        "drain with history on ÷ off, -c 1 (B1 with the history stream)",
        lambda c: c.batch,
        rt.drain_with(1),
        ((HISTORY_OFF, rt.drain_with(1, history=False)),),
        0.95,
    ),
    Case(
        "B2",
        "drain pre-queued no-ops, -c 2, no flags",
        lambda c: c.batch,
        rt.drain_with(2),
        (("raw aiormq x2", raw.drain_with("aiormq", 2)), ("raw aio-pika x2", raw.drain_with("aio-pika", 2))),
        0.9,
    ),
    Case(
        "S1",
        "worker start-up to first consume (topology declared before)",
        lambda c: 1,
        startup.rabbittask_worker,
        (("raw aiormq consumer process", startup.raw_aiormq),),
        0.0,
        higher_is_better=False,
        extra_s=0.3,
    ),
    Case(
        "S2",
        "start-up of an app with 200 tasks on 50 queues, to consuming all",
        lambda c: 1,
        startup.rabbittask_wide,
        (("raw aiormq consumer process (1 queue)", startup.raw_aiormq),),
        1.0,
        higher_is_better=False,
        extra_s=0.0,
    ),
    Case(
        "C",
        ".call() round trip, sequential",
        lambda c: c.calls,
        rt.call,
        (("raw aio-pika", raw.call_echo),),
        1.1,
        higher_is_better=False,
    ),
    Case(
        "C2",
        ".acall() round trip, sequential",
        lambda c: c.calls,
        rt.acall,
        (("raw aio-pika", raw.call_echo),),
        1.1,
        higher_is_better=False,
    ),
    Case(
        "D",
        "drain pre-queued Celery protocol 2 messages, -c 1",
        lambda c: c.batch,
        celery_rows.rabbittask_on_celery,
        (
            (f"{RT} own format, events off", rt.drain_with(1, events=False)),
            ("celery worker -P solo", celery_rows.celery_worker),
        ),
        0.9,
    ),
]
