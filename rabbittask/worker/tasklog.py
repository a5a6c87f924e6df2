"""The worker's log line for each settled task: succeeded, retried (with when), failed or dead-lettered (with why).

They go to the logger `rabbittask.worker.tasks`, so a deployment can quiet them alone
(`logging.getLogger("rabbittask.worker.tasks").setLevel("WARNING")`). A success is the hot path: the
settler asks `enabled()` once when it is made and skips the call entirely when INFO is off, so a
drain with quiet logs pays one attribute check per task, not a format. Each line carries the same
facts as fields (`extra={"rt": ...}`) for the JSON log format.
"""

from __future__ import annotations

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
