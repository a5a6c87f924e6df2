"""The worker's log line for each settled task: succeeded, retried (with when), failed or dead-lettered (with why).

They go to the logger `rabbittask.worker.tasks`, so a deployment can quiet them alone
(`logging.getLogger("rabbittask.worker.tasks").setLevel("WARNING")`). A success is the hot path:

* with INFO off, the settler asked `enabled()` once when it was made and makes no call at all;
* with INFO on, `Successes` collects success lines for at most 50 ms and logs them as one record,
  one line per task (the worker's formatters give each line its own time, level and logger prefix,
  or its own JSON object). A log record costs about 9 µs (creating it, formatting the time, a write
  and a flush), a fifth of a no-op task's whole cost in a drain: one record for many lines makes a
  success line cost about a microsecond. Retries and failures are rarer and logged at once, after
  the success lines before them, so the order of one task's lines holds.

Each line carries the same facts as fields (`extra={"rt": ...}`) for the JSON log format.
"""

from __future__ import annotations

import asyncio
import logging
import time

from rabbittask import logs
from rabbittask.worker.outcome import Outcome

log = logging.getLogger("rabbittask.worker.tasks")


def enabled() -> bool:
    """True when success lines are logged (INFO on): the settler checks this once, not per task."""
    return log.isEnabledFor(logging.INFO)


def duration(seconds: float) -> str:
    """`85 µs`, `12.3 ms`, `1.25 s`: a runtime a person reads at a glance."""
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1000:.3g} ms"
    return f"{seconds:.3g} s"


FLUSH_S = 0.05  # how long a success line may wait to be written with others: not long enough to notice
FLUSH_LINES = 500


class Successes:
    """Success lines, logged together at most `FLUSH_S` after the first of them (each with its own time)."""

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending: list[tuple[str, str, float, float]] = []

    def add(self, outcome: Outcome) -> None:
        """Note a success; the first one schedules the flush (outside an event loop it is logged at once)."""
        pending = self.pending
        pending.append((outcome.task_name, outcome.message_id, outcome.runtime_s, time.time()))
        if len(pending) == 1:
            try:
                asyncio.get_running_loop().call_later(FLUSH_S, self.flush)
            except RuntimeError:
                self.flush()
        elif len(pending) >= FLUSH_LINES:
            self.flush()

    def flush(self) -> None:
        """Log the successes noted so far: one record, a line (and in JSON an object) per task."""
        pending, self.pending = self.pending, []
        if not pending:
            return
        lines = [
            f"task {name} [{task_id}] succeeded in {duration(runtime_s)}" for name, task_id, runtime_s, _ in pending
        ]
        each = None
        if logs.structured:
            each = [
                {"task": name, "id": task_id, "outcome": "succeeded", "runtime_s": round(runtime_s, 6)}
                for name, task_id, runtime_s, _ in pending
            ]
        times = [at for *_, at in pending]
        log.info("%s", "\n".join(lines), extra={"rt_lines": lines, "rt_each": each, "rt_times": times})


def succeeded(outcome: Outcome) -> None:
    """`task shop.send_email [3f2c...] succeeded in 12.3 ms`."""
    log.info(
        "task %s [%s] succeeded in %s",
        outcome.task_name,
        outcome.message_id,
        duration(outcome.runtime_s),
        extra={"rt": _fields(outcome, "succeeded")} if logs.structured else None,  # fields cost 3 µs
    )


def retried(outcome: Outcome, attempt: object, delay_s: float) -> None:
    """`task shop.charge [...] raised ConnectionError: refused; attempt 2 in 1.48 s (at 12:00:03)`."""
    due = time.strftime("%H:%M:%S", time.localtime(time.time() + delay_s))
    log.info(
        "task %s [%s] raised %s: %s; attempt %s in %.3g s (at %s)",
        outcome.task_name,
        outcome.message_id,
        outcome.exc_type,
        outcome.exc_message,
        attempt,
        delay_s,
        due,
        extra={"rt": _fields(outcome, "retried") | {"attempt": attempt, "retry_in_s": round(delay_s, 3)}},
    )


def dead_lettered(outcome: Outcome, dlq: str) -> None:
    """A task that ran and failed for good (ERROR, with its traceback), or a message that never ran (WARNING)."""
    reason = outcome.reason
    fields = _fields(outcome, "failed" if reason is not None and reason.ran else "dead-lettered")
    fields |= {"dlq": dlq, "traceback": outcome.traceback} if outcome.traceback else {"dlq": dlq}
    if reason is not None and reason.ran:
        log.error(
            "task %s [%s] failed after %s (%s): %s: %s; dead-lettered to %s",
            outcome.task_name,
            outcome.message_id,
            duration(outcome.runtime_s),
            reason,
            outcome.exc_type,
            outcome.exc_message,
            dlq,
            extra={"rt": fields},
        )
        return
    log.warning(
        "task %s [%s] dead-lettered to %s without running (%s): %s: %s",
        outcome.task_name or "?",
        outcome.message_id,
        dlq,
        reason,
        outcome.exc_type,
        outcome.exc_message,
        extra={"rt": fields},
    )


def _fields(outcome: Outcome, state: str) -> dict[str, object]:
    fields: dict[str, object] = {
        "task": outcome.task_name,
        "id": outcome.message_id,
        "outcome": state,
        "runtime_s": round(outcome.runtime_s, 6),
    }
    if outcome.reason is not None:
        fields |= {"reason": str(outcome.reason), "exc_type": outcome.exc_type, "exc_message": outcome.exc_message}
    return fields
