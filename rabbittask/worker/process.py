"""What a forked child does: process set-up, then the consume loop, then `os._exit`.

Set-up happens after the fork, never before: default signal handlers (SIGINT ignored, so a
Ctrl-C at the terminal reaches the supervisor alone and the children shut down once, when it
says so), death with the supervisor (`PR_SET_PDEATHSIG` on Linux, and a parent-pid check every
half second everywhere), a process title, the app's `on_worker_process_init` hooks (a failing one
halts the worker with `EXIT_CONFIG`), and a fresh event loop. The child tells the supervisor
what it needs to know with one byte on a pipe: `READY` once it consumes, `RETIRING` when it
stops taking messages so its successor starts at once, (for `/readyz`) `CONSUMING` / `LOST`
each time its consumers attach or its session ends, its load for the autoscaler (pool.py) when it
changes, and child 1 forwards `pool_grow` / `pool_shrink` commands (`GROW` / `SHRINK`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

from setproctitle import setproctitle

from rabbittask.worker.child import Child
from rabbittask.worker.exits import EXIT_CONFIG, EXIT_CRASH
from rabbittask.worker.options import WorkerOptions
from rabbittask.worker.running import RunningMarkers
from rabbittask.worker.timeouts import consumer_timeouts

if TYPE_CHECKING:
    from rabbittask.app import App

log = logging.getLogger(__name__)

READY = b"U"
RETIRING = b"R"
CONSUMING = b"C"  # its consumers are attached (again); with --metrics-port only, for /readyz
LOST = b"L"  # its session ended (connection lost, or stopping)
PARENT_CHECK_S = 0.5
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """What a child needs from the supervisor: the app, its queues, the options, and who its parent is."""

    app: App
    queues: Sequence[str]
    options: WorkerOptions
    number: int
    supervisor_pid: int
    pipe: int  # write end of this child's pipe to the supervisor
    running_dir: str = ""  # the supervisor's directory of running markers (running.py); "" for none


def title(role: str, queues: Sequence[str], extra: str = "") -> str:
    """A process title as `ps` shows it: role, queues, and a count."""
    return f"rabbittask {role} -Q {','.join(queues)}{' ' + extra if extra else ''}"


def run_child(spec: ChildSpec, close_fds: Sequence[int] = ()) -> NoReturn:
    """The body of a forked child: never returns; exits with the child's exit code."""
    code = EXIT_CRASH
    try:
        _reset_signals()
        for fd in close_fds:  # the supervisor's ends of other pipes
            with contextlib.suppress(OSError):
                os.close(fd)
        die_with_parent(spec.supervisor_pid)
        code = _serve(spec)
    except BaseException:  # noqa: BLE001 - whatever it is, the supervisor must hear an exit code
        log.exception("child %d crashed", spec.number)
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)  # not sys.exit: the supervisor's atexit handlers and buffers are not this process's


def _reset_signals() -> None:
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def die_with_parent(supervisor_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when the supervisor dies (Linux); exit if it already has."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
                log.warning(
                    "prctl(PR_SET_PDEATHSIG) failed (errno %d); relying on the parent check", ctypes.get_errno()
                )
        except (OSError, AttributeError) as e:
            log.warning("prctl(PR_SET_PDEATHSIG) is not available (%s); relying on the parent check", e)
    if os.getppid() != supervisor_pid:  # it died between the fork and the prctl
        os._exit(EXIT_CRASH)


def _notify(fd: int, what: bytes) -> None:
    with contextlib.suppress(OSError):  # the supervisor is gone: the parent check ends this process
        os.write(fd, what)


def _serve(spec: ChildSpec) -> int:
    options = spec.options
    for hook in spec.app.worker_process_init:
        try:
            hook()
        except Exception as e:  # noqa: BLE001 - a broken hook fails the same way in every child: halt, say why
            name = getattr(hook, "__qualname__", repr(hook))
            log.exception("on_worker_process_init hook %s failed: %s: %s", name, type(e).__name__, e)
            return EXIT_CONFIG
    child = Child(
        spec.app,
        spec.queues,
        prefetch=options.prefetch,
        threads=options.threads,
        inline_max_s=options.inline_ms / 1000,
        shutdown_timeout_s=options.shutdown_timeout_s,
        max_tasks=options.max_tasks_per_child,
        max_memory_bytes=options.max_memory_bytes,
        on_ready=lambda: _notify(spec.pipe, READY),
        on_retire=lambda reason: _notify(spec.pipe, RETIRING),
        on_consuming=(lambda up: _notify(spec.pipe, CONSUMING if up else LOST)) if options.metrics_port else None,
        metrics=options.metrics_port is not None,
        running_markers=RunningMarkers(spec.running_dir) if spec.running_dir else None,
        partition_slot=(spec.number - 1, options.concurrency),  # its home partitions (partitions.py)
        on_pool=(lambda what: _notify(spec.pipe, what)) if spec.number == 1 else None,
        consumer_timeouts=consumer_timeouts(spec.app, spec.queues or sorted(spec.app.queues), options),
    )
    child.stop_signals = (signal.SIGTERM,)
    setproctitle(title(f"child {spec.number}", child.queues, "tasks=0"))
    if options.loop == "uvloop":
        import uvloop  # checked by the worker command before the fork

        return uvloop.run(_main(child, spec))
    return asyncio.run(_main(child, spec))


async def _main(child: Child, spec: ChildSpec) -> int:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, child.retire, "rolling restart, SIGHUP")
    watch = asyncio.ensure_future(_watch(child, spec))
    try:
        return await child.run()
    finally:
        watch.cancel()


async def _watch(child: Child, spec: ChildSpec) -> None:
    """Every half second: exit if the supervisor is gone; say a new load; show the task count in the title."""
    shown = 0
    load = b""
    while True:
        await asyncio.sleep(PARENT_CHECK_S)
        if os.getppid() != spec.supervisor_pid:
            log.error(
                "the supervisor (pid %d) is gone: exiting; the broker requeues what was unacked", spec.supervisor_pid
            )
            os._exit(EXIT_CRASH)
        if (now := child.load()) != load:
            load = now
            _notify(spec.pipe, now)
        if child.tasks_done != shown:
            shown = child.tasks_done
            setproctitle(title(f"child {spec.number}", child.queues, f"tasks={shown}"))
