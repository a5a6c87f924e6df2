"""The supervisor: forks the children, reaps them, replaces them; never touches a message.

Modelled on gunicorn's arbiter. Signal handlers only queue the signal and wake the loop; one loop
dispatches `handle_<signal>`, reaps exited children (`waitpid(-1, WNOHANG)`), classifies each exit
and restores the count:

* a child that said it is retiring (max tasks, memory, a hard time limit, a rolling restart) gets
  its successor forked the moment it says so, before it has finished what it holds;
* exit code 78 (`EXIT_CONFIG`: the topology on the broker disagrees with the code) halts the
  worker with that code, because every restart would fail the same way;
* any other exit is a crash and the child is restarted; crashes of children that never got to
  consume, or lived less than `STABLE_S`, back off exponentially (0.25 s doubling to 30 s) and
  say why, instead of spinning.

SIGTERM/SIGINT: warm shutdown (children cancel their consumers, hand back what has not started,
finish and ack what runs), SIGKILL for those still running `shutdown_timeout_s` (+ a grace) later;
a second SIGTERM/SIGINT, or SIGQUIT: cold shutdown (SIGKILL now, the broker requeues what was
unacked). SIGHUP: reload the app's modules and replace the children one by one, each retiring
only once its successor consumes.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import select
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from setproctitle import setproctitle

from rabbittask.worker.exits import EXIT_CONFIG, backoff_s, describe_exit
from rabbittask.worker.metrics import MetricsServer
from rabbittask.worker.options import WorkerOptions
from rabbittask.worker.pool import GROW, SHRINK, ChildProc, Pool, parse_autoscale
from rabbittask.worker.process import CONSUMING, LOST, READY, RETIRING, ChildSpec, run_child, title

if TYPE_CHECKING:
    from types import FrameType

    from rabbittask.app import App

log = logging.getLogger(__name__)

STABLE_S = 5.0  # a child that consumed this long was not crash-looping
KILL_GRACE_S = 3.0  # beyond shutdown_timeout_s: children close their connections, then SIGKILL
TICK_S = 1.0
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)


class Halt(Exception):  # noqa: N818 - control flow: the supervisor stops with this exit status
    """Raised inside the supervisor loop to stop the worker with `code`."""

    def __init__(self, reason: str, code: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class Supervisor:
    """Runs `options.concurrency` children consuming `queues` of `app`; `run()` returns the exit code."""

    def __init__(
        self,
        app: App,
        queues: Sequence[str],
        options: WorkerOptions,
        *,
        reload_app: Callable[[], App] | None = None,
    ) -> None:
        self.app = app
        self.queues = list(queues) or sorted(app.queues)
        self.options = options
        self.reload_app = reload_app
        self.pid = os.getpid()
        self.children: dict[int, ChildProc] = {}
        self.pool = Pool(options.concurrency, parse_autoscale(options.autoscale) if options.autoscale else None)
        self.crashes = 0
        self.exit_code = 0
        self._last_crash_at = 0.0
        self._next_start_at = 0.0
        self._stopping = False
        self._to_replace: list[int] = []
        self._signals: list[int] = []
        self._wake_r, self._wake_w = -1, -1
        self._metrics: MetricsServer | None = None
        self._running_dir = ""  # shared with the children: which redelivered message died running (running.py)

    # -- the loop ------------------------------------------------------------------------------------

    def run(self) -> int:
        """Fork the children and supervise them until a shutdown; return the worker's exit code."""
        self._init_signals()
        self._running_dir = tempfile.mkdtemp(prefix="rabbittask-running-")
        setproctitle(title("supervisor", self.queues, f"app={self.app.name} -c {self.options.concurrency}"))
        log.info("supervisor pid %d: %d child(ren) on %s", self.pid, self.options.concurrency, ", ".join(self.queues))
        if self.options.metrics_port is not None:
            self._metrics = MetricsServer(self.options.metrics_host, self.options.metrics_port, self.ready)
            self._metrics.start()
        try:
            while True:
                for sig in self._pop_signals():
                    if self._dispatch(sig):
                        return self.exit_code
                self.reap()
                self.manage()
                self._wait(self._timeout())
        except Halt as halt:
            log.error("%s", halt.reason)
            self.stop(graceful=True)
            return halt.code
        finally:
            self._close_signals()
            shutil.rmtree(self._running_dir, ignore_errors=True)
            if self._metrics is not None:
                self._metrics.close()

    def ready(self) -> bool:
        """True when every child has its consumers attached (what /readyz reports)."""
        children = list(self.children.values())
        consuming = sum(1 for c in children if c.consuming and not c.retiring)
        return not self._stopping and consuming >= self.pool.target

    def _dispatch(self, sig: int) -> bool:
        """Handle one queued signal; True when the worker has shut down."""
        if sig in (signal.SIGTERM, signal.SIGINT):
            self.stop(graceful=True)
            return True
        if sig == signal.SIGQUIT:
            self.exit_code = 1
            self.stop(graceful=False)
            return True
        if sig == signal.SIGHUP:
            self.handle_hup()
        return False

    def _timeout(self) -> float:
        if self._next_start_at:
            return max(0.0, min(TICK_S, self._next_start_at - time.monotonic()))
        return TICK_S

    # -- signals -------------------------------------------------------------------------------------

    def _init_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        for sig in SIGNALS:
            signal.signal(sig, self._queue_signal)
        signal.signal(signal.SIGCHLD, self._wake)

    def _close_signals(self) -> None:
        for sig in (*SIGNALS, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _queue_signal(self, signum: int, frame: FrameType | None) -> None:
        if len(self._signals) < 5:
            self._signals.append(signum)
        self._wake(signum, frame)

    def _wake(self, signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(OSError):  # a full pipe already wakes the loop
            os.write(self._wake_w, b".")

    def _pop_signals(self) -> list[int]:
        signals, self._signals = self._signals, []
        return signals

    def _wait(self, timeout_s: float) -> None:
        """Sleep until a signal, a message from a child, or the timeout; read what the children said."""
        pipes = {c.pipe: c for c in self.children.values()}
        try:
            readable, _, _ = select.select([self._wake_r, *pipes], [], [], timeout_s)
        except InterruptedError:
            return
        for fd in readable:
            if fd == self._wake_r:
                with contextlib.suppress(OSError):
                    while os.read(self._wake_r, 4096):
                        pass
            else:
                self._read_pipe(pipes[fd])

    # -- children ------------------------------------------------------------------------------------

    def spawn(self) -> ChildProc:
        """Fork one child; the child runs the consume loop and never returns here."""
        numbers = {c.number for c in self.children.values()}
        number = next(n for n in range(1, len(numbers) + 2) if n not in numbers)
        read_fd, write_fd = os.pipe()
        gc.freeze()  # what exists now stays shared with the child: its collector never touches (copies) those pages
        pid = os.fork()
        if pid == 0:
            others = [c.pipe for c in self.children.values()] + [read_fd, self._wake_r, self._wake_w]
            if self._metrics is not None:
                others.append(self._metrics.fileno)
            run_child(
                ChildSpec(self.app, self.queues, self.options, number, self.pid, write_fd, self._running_dir), others
            )
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        child = ChildProc(pid, number, read_fd, time.monotonic())
        self.children[pid] = child
        log.info("started child %d (pid %d)", number, pid)
        return child

    def manage(self) -> None:
        """Start what is missing: a successor per retiring child, the next step of a rolling restart."""
        if self._stopping:
            return
        now = time.monotonic()
        if self.crashes and now - self._last_crash_at >= STABLE_S and self._stable_since_crash(now):
            self.crashes = 0
        if now < self._next_start_at:
            return
        self._next_start_at = 0.0
        self._replace_next()
        for child in self.pool.tick(list(self.children.values()), now):  # autoscale, pool grow/shrink
            child.retiring = True
            log.info("pool of %d: retiring child %d (pid %d)", self.pool.target, child.number, child.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGUSR1)  # retire: finish and ack what it holds, then exit
        active = sum(1 for c in self.children.values() if not c.retiring)
        for _ in range(self.pool.target - active):
            self.spawn()

    def _stable_since_crash(self, now: float) -> bool:
        return any(
            c.ready and c.started_at > self._last_crash_at and now - c.started_at >= STABLE_S
            for c in self.children.values()
        )

    def _read_pipe(self, child: ChildProc) -> None:
        try:
            data = os.read(child.pipe, 64)
        except (BlockingIOError, InterruptedError):
            return
        if RETIRING in data and not child.retiring:
            child.retiring = True
            log.info("child %d (pid %d) is retiring; starting its successor", child.number, child.pid)
        if CONSUMING in data or LOST in data:  # the last word counts
            child.consuming = data.rfind(CONSUMING) > data.rfind(LOST)
        child.heard(data)  # its load, for the autoscaler
        if GROW in data or SHRINK in data:  # app.control.pool_grow / pool_shrink, through child 1
            target = self.pool.shrink(data.count(SHRINK)) if SHRINK in data else self.pool.grow(data.count(GROW))
            log.info(
                "pool %s by control command: %d child(ren) wanted", "shrunk" if SHRINK in data else "grown", target
            )
        if READY in data and not child.ready:
            child.ready = True
            if child.replacing:
                self._retire_replaced(child)

    def reap(self) -> None:
        """Collect every exited child and decide what its exit means."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue
            self._read_pipe(child)  # what it said just before it exited
            with contextlib.suppress(OSError):
                os.close(child.pipe)
            if self._metrics is not None:
                self._metrics.child_exited(pid, self._restart_reason(child, status))
            self._on_exit(child, status)

    def _restart_reason(self, child: ChildProc, status: int) -> str | None:
        """Why an exited child is replaced (for the restarts metric), or None when it is not."""
        if self._stopping:
            return None
        if child.retiring:
            return "retired"
        return None if os.waitstatus_to_exitcode(status) == EXIT_CONFIG else "crashed"

    def _on_exit(self, child: ChildProc, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        what = f"child {child.number} (pid {child.pid}) {describe_exit(status)}"
        if child.replacing:
            self._abort_rolling_restart(child)
        if self._stopping:
            log.info("%s", what)
            if code != 0:
                self.exit_code = 1
            return
        if child.retiring:  # its successor runs already
            if code == 0:
                log.info("child %d (pid %d) retired", child.number, child.pid)
            else:
                log.warning("%s while it was retiring; its successor runs already", what)
            return
        if code == EXIT_CONFIG:
            raise Halt(f"{what}: a configuration error (see its log above); a restart would fail the same way", code)
        now = time.monotonic()
        lived = now - child.started_at
        if child.ready and lived >= STABLE_S:
            self.crashes = 0
            log.error("%s after %.0f s; restarting it", what, lived)
            return
        self.crashes += 1
        self._last_crash_at = now
        delay = backoff_s(self.crashes)
        self._next_start_at = max(self._next_start_at, now + delay)
        phase = "during start-up" if not child.ready else f"{lived:.1f} s after start"
        log.error(
            "%s %s (%d crash(es) in a row; see its log above); next start in %.2f s", what, phase, self.crashes, delay
        )

    # -- rolling restart -----------------------------------------------------------------------------

    def handle_hup(self) -> None:
        """Reload the app's code, then replace the children one by one without a gap."""
        if self.reload_app is not None:
            try:
                app = self.reload_app()
                missing = [q for q in self.queues if q not in app.queues]
                if missing:
                    raise ValueError(f"the reloaded app has no task on queue(s) {', '.join(missing)}")
            except Exception as e:  # noqa: BLE001 - a broken reload must not take the running worker down
                log.error("SIGHUP: reloading the app failed, the children keep the code they run: %s", e)
                return
            self.app = app
        self._to_replace = [c.pid for c in self.children.values() if not c.retiring]
        log.info("SIGHUP: replacing %d child(ren) one by one", len(self._to_replace))

    def _replace_next(self) -> None:
        if any(c.replacing for c in self.children.values()):
            return  # one at a time: the previous successor is not consuming yet
        while self._to_replace:
            old = self.children.get(self._to_replace.pop(0))
            if old is not None and not old.retiring:
                old.retiring = True  # the successor takes its place in the count
                self.spawn().replacing = old.pid
                return

    def _retire_replaced(self, successor: ChildProc) -> None:
        old_pid, successor.replacing = successor.replacing, 0
        if old_pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(old_pid, signal.SIGUSR1)  # retire: finish and ack what it holds, then exit

    def _abort_rolling_restart(self, successor: ChildProc) -> None:
        old = self.children.get(successor.replacing)
        if old is not None:
            old.retiring = False
        if self._to_replace or old is not None:
            log.error("rolling restart stopped: a new child exited before it consumed; the others keep running")
        self._to_replace = []

    # -- shutdown ------------------------------------------------------------------------------------

    def stop(self, graceful: bool) -> None:
        """Warm (SIGTERM, wait, then SIGKILL) or cold (SIGKILL now) shutdown of every child."""
        self._stopping = True
        self._to_replace = []
        if graceful:
            log.info(
                "warm shutdown: %d child(ren) finish their running tasks (at most %.0f s)",
                len(self.children),
                self.options.shutdown_timeout_s,
            )
        deadline = time.monotonic() + (self.options.shutdown_timeout_s + KILL_GRACE_S if graceful else KILL_GRACE_S)
        self._kill_all(signal.SIGTERM if graceful else signal.SIGKILL)
        while self.children and time.monotonic() < deadline:
            self._wait(0.1)
            if graceful and any(s in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT) for s in self._pop_signals()):
                log.warning("second signal: cold shutdown, unfinished tasks go back to their queues")
                graceful = False
                self.exit_code = 1
                self._kill_all(signal.SIGKILL)
            self.reap()
        if self.children:
            log.warning("%d child(ren) still running: killing them", len(self.children))
            self.exit_code = 1
            self._kill_all(signal.SIGKILL)
            for pid in list(self.children):
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
                with contextlib.suppress(OSError):
                    os.close(self.children.pop(pid).pipe)
        log.info("worker stopped")

    def _kill_all(self, sig: int) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
