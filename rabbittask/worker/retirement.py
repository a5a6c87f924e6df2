"""When a child stops: its lifecycle (one `State`), its max-tasks budget and its memory limit.

A child runs until a stop signal (warm shutdown: hand back what has not started, finish what runs)
or until it retires (stop consuming, finish and ack all it holds, then return), after `max_tasks`
deliveries, above `max_memory_bytes`, on a rolling restart, or after a sync task passed its hard
time limit (its thread cannot be stopped, so the child dead-letters it and hands the rest back).
A second stop signal is a cold shutdown.

The budget is kept exact without handing messages back (a quorum queue counts every return): the
broker sends at most prefetch + (acks so far) messages, so the consumer's prefetch is capped at what
is left of the budget, and once one more ack could bring a message beyond it, acks are held until
the consumer is cancelled. The child then retires at the last delivery of its budget, or after
`BUDGET_IDLE_S` with nothing to do.
"""

from __future__ import annotations

import asyncio
import enum
import sys

from rabbittask.worker.limits import MemoryLimit

BUDGET_IDLE_S = 0.2  # at its max-tasks budget with nothing to do: how long to wait for more before retiring


class State(enum.Enum):
    """Where a child is in its life; it only moves forward (RUNNING -> RETIRING -> SHUTTING_DOWN -> STOPPED)."""

    RUNNING = "running"  # consuming
    RETIRING = "retiring"  # consumers cancelled: finish and ack everything held, then return
    SHUTTING_DOWN = "shutting down"  # as retiring, but hand back what has not started and wait a bounded time
    STOPPED = "stopped"  # `run()` returned


class Lifecycle:
    """One child's state, the stop signals it got, and events to wait for a change on."""

    def __init__(self) -> None:
        self.state = State.RUNNING
        self.signals = 0  # stop signals so far: the second one is a cold shutdown
        self.reason = ""  # why it retires or shuts down
        self.stopping = asyncio.Event()  # set once the state leaves RUNNING
        self.handing_back = asyncio.Event()  # set once the state reaches SHUTTING_DOWN

    @property
    def running(self) -> bool:
        return self.state is State.RUNNING

    def signal(self) -> bool:
        """A stop signal: a warm shutdown; False if it is the second one (a cold shutdown is due)."""
        self.signals += 1
        if self.signals > 1:
            return False
        if self.state in (State.RUNNING, State.RETIRING):
            self._move(State.SHUTTING_DOWN, "stop signal")
        return True

    def retire(self, reason: str, *, hand_back: bool = False) -> bool:
        """Retire (`hand_back`: and hand back what has not started); True if it was running until now."""
        if self.state is State.RUNNING:
            self._move(State.SHUTTING_DOWN if hand_back else State.RETIRING, reason)
            return True
        if hand_back and self.state is State.RETIRING:
            self._move(State.SHUTTING_DOWN, self.reason)
        return False

    def stopped(self) -> None:
        self._move(State.STOPPED, self.reason)

    def _move(self, state: State, reason: str) -> None:
        self.state, self.reason = state, reason
        if state is not State.RUNNING:
            self.stopping.set()
        if state in (State.SHUTTING_DOWN, State.STOPPED):
            self.handing_back.set()


class Retirement:
    """A child's max-tasks budget (0: none) and memory limit (0: none), counted per delivery and per settle."""

    def __init__(self, max_tasks: int = 0, max_memory_bytes: int = 0) -> None:
        self.max_tasks = max_tasks
        self.received = 0  # deliveries so far, over all sessions
        self.tasks_done = 0
        self.memory = MemoryLimit(max_memory_bytes) if max_memory_bytes else None
        self._retire_at = max_tasks or -1
        self._acks_left = sys.maxsize  # acks this channel may send before the broker could exceed max_tasks

    def prefetch(self, prefetch: int) -> int:
        """The prefetch of a new session: at most what is left of the budget (which sets the acks it may send)."""
        if not self.max_tasks:
            return prefetch
        budget = max(1, self.max_tasks - self.received)
        prefetch = min(prefetch, budget)
        self._acks_left = budget - prefetch
        return prefetch

    def delivered(self) -> bool:
        """Count a delivery; True at the last one of the budget."""
        self.received += 1
        return self.received == self._retire_at

    def settled(self) -> bool:
        """Count a settled task; True when a limit needs a look (one more ack could exceed the budget, or memory)."""
        self.tasks_done += 1
        self._acks_left -= 1
        return self._acks_left < 0 or self.memory is not None

    @property
    def over_budget(self) -> bool:
        """True once one more ack could let the broker send more than `max_tasks` messages: acks are held."""
        return self._acks_left < 0

    def memory_exceeded(self) -> str:
        """Why to retire for memory, or ""."""
        if self.memory is None or not (rss := self.memory.exceeded()):
            return ""
        limit_mb = self.memory.max_bytes / 2**20
        return f"RSS {rss / 2**20:.0f} MB above --max-memory-per-child {limit_mb:g} MB"
