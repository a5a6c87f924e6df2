"""Exit statuses of a worker child and of the worker, and how the supervisor reads a child's exit.

A child that exits with `EXIT_CONFIG` halts the worker with it (every restart would fail the same
way); any other exit of a child that was not retiring is a crash, and the next start waits
`backoff_s(crashes in a row)`.
"""

from __future__ import annotations

import os
import signal

EXIT_OK = 0
EXIT_CONFIG = 78  # sysexits EX_CONFIG: a restart would fail the same way
EXIT_CRASH = 70  # sysexits EX_SOFTWARE: the child raised out of its loop
BACKOFF_FIRST_S = 0.25
BACKOFF_MAX_S = 30.0


def backoff_s(crashes: int) -> float:
    """The wait before the next start after `crashes` crashes in a row (0 = none)."""
    return 0.0 if crashes <= 0 else min(BACKOFF_FIRST_S * 2 ** (crashes - 1), BACKOFF_MAX_S)


def describe_exit(status: int) -> str:
    """A waitpid status in words, with the likely cause of a SIGKILL."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return f"exited with code {code}"
    sig = signal.Signals(-code)
    if sig == signal.SIGKILL:
        return "was killed by SIGKILL (out of memory? see `dmesg`)"
    return f"was killed by {sig.name}"
