"""Limits a worker child enforces on itself: time limits of sync tasks, and its own memory.

A sync task runs in a worker thread that nothing can kill. At its soft limit the child raises
`SoftTimeLimitExceeded` inside that thread (`PyThreadState_SetAsyncExc`: it lands at the next
Python bytecode, so a thread blocked in one long C call, e.g. `time.sleep(600)`, sees it when the
call returns). At its hard limit the thread is abandoned: the child dead-letters the message and
exits, and the supervisor starts a fresh child. Async tasks are limited in `execute.py` with
`asyncio.timeout`, which cancels them.
"""

from __future__ import annotations

import ctypes
import math
import threading
import time
from dataclasses import dataclass

from aiormq.abc import DeliveredMessage

from rabbittask.errors import SoftTimeLimitExceeded
from rabbittask.task import Task

MEMORY_CHECK_EVERY_S = 0.01  # reading RSS costs ~10 µs: at most 1% of a core, whatever the task rate


def raise_in_thread(ident: int, exc_type: type[BaseException] | None) -> bool:
    """Make thread `ident` raise `exc_type` at its next bytecode (None clears a pending one); False if gone."""
    exc = ctypes.py_object(exc_type) if exc_type is not None else ctypes.py_object()
    return bool(ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), exc) == 1)


@dataclass(slots=True)
class Running:
    """A sync task with a time limit, running in a worker thread."""

    message: DeliveredMessage
    task: Task[..., object]
    ident: int
    soft_at: float
    hard_at: float
    soft_sent: bool = False
    abandoned: bool = False


class ThreadLimits:
    """Soft and hard time limits of sync tasks: threads register, the event loop checks every tick."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[int, Running] = {}

    def start(self, task: Task[..., object], message: DeliveredMessage) -> Running | None:
        """Called in the worker thread before the task runs; None when the task has no limit."""
        if task.time_limit is None and task.soft_time_limit is None:
            return None
        now = time.monotonic()
        entry = Running(
            message,
            task,
            threading.get_ident(),
            now + task.soft_time_limit if task.soft_time_limit is not None else math.inf,
            now + task.time_limit if task.time_limit is not None else math.inf,
        )
        with self._lock:
            self._running[entry.ident] = entry
        return entry

    def finish(self, entry: Running) -> bool:
        """Called in the worker thread after the task; True if its outcome must be dropped (hard limit hit).

        No soft-limit exception can be raised in the thread after this returns: one still pending is cleared.
        """
        with self._lock:
            self._running.pop(entry.ident, None)
            if entry.soft_sent:
                raise_in_thread(entry.ident, None)
        return entry.abandoned

    def check(self, now: float) -> list[Running]:
        """Raise soft limits that passed; return (and forget) the tasks past their hard limit."""
        hard: list[Running] = []
        with self._lock:
            for entry in self._running.values():
                if now >= entry.hard_at:
                    entry.abandoned = True
                    hard.append(entry)
                elif not entry.soft_sent and now >= entry.soft_at:
                    entry.soft_sent = raise_in_thread(entry.ident, SoftTimeLimitExceeded)
            for entry in hard:
                del self._running[entry.ident]
        return hard


class MemoryLimit:
    """This process's RSS against a limit, read at most every `MEMORY_CHECK_EVERY_S`."""

    def __init__(self, max_bytes: int) -> None:
        import psutil  # only with a memory limit: 10-20 ms of every child's start otherwise

        self.max_bytes = max_bytes
        self._process = psutil.Process()
        self._next_check = 0.0

    def exceeded(self, *, force: bool = False) -> int:
        """The RSS in bytes if it is above the limit, else 0."""
        now = time.monotonic()
        if not force and now < self._next_check:
            return 0
        self._next_check = now + MEMORY_CHECK_EVERY_S
        rss = int(self._process.memory_info().rss)
        return rss if rss > self.max_bytes else 0
