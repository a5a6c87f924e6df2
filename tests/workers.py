"""Start real worker processes in tests: `rabbittask worker` as a subprocess with its own process group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import psutil
import pytest

from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent


class WorkerProcess:
    """A `rabbittask worker` subprocess; its log is captured to a file the test can read."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, wrap: Sequence[str] = ()) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*wrap, sys.executable, "-m", "rabbittask", "worker", *args],  # wrap: e.g. `ip netns exec NS`
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: killpg reaches children too
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        """Everything the worker printed so far."""
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout_s: float = 20.0, count: int = 1) -> None:
        """Wait until `text` appears `count` times in the log; fail with the log tail if not (at once if it exited)."""

        def shown() -> bool:
            if self.log().count(text) >= count:
                return True
            if self.proc.poll() is not None:
                raise AssertionError(never())
            return False

        def never() -> str:
            return f"worker log never showed {text!r} x{count}; exit={self.proc.poll()}\n{self.log()[-3000:]}"

        wait_until(shown, timeout_s, never)

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def children(self) -> list[int]:
        """Pids of the supervisor's live children (the processes that consume)."""
        try:
            kids = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return []
        return [k.pid for k in kids if _alive(k)]

    def wait_for_children(self, count: int, timeout_s: float = 20.0) -> list[int]:
        """Wait until the supervisor has exactly `count` live children; return their pids."""

        def found() -> tuple[list[int]] | None:  # a tuple: true even when the pids are []
            if len(pids := self.children()) == count:
                return (pids,)
            if self.proc.poll() is not None:
                raise AssertionError(wrong())
            return None

        def wrong() -> str:
            return f"worker has children {self.children()}, expected {count}\n{self.log()[-3000:]}"

        (pids,) = wait_until(found, timeout_s, wrong)
        return pids

    def kill(self) -> None:
        """SIGKILL the whole process group (worker and any children)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM, wait for exit, SIGKILL if it does not; returns the exit code."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return self.proc.returncode


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def gone(pids: list[int]) -> bool:
    """True when none of `pids` runs any more (zombies count as gone: they hold no socket)."""
    for pid in pids:
        try:
            if _alive(psutil.Process(pid)):
                return False
        except psutil.NoSuchProcess:
            continue
    return True


WorkerFactory = Callable[..., WorkerProcess]


def worker_env(broker_url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of a worker subprocess: the test broker and the repo on the path."""
    env = dict(os.environ)
    env["RABBITTASK_BROKER_URL"] = broker_url
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.update(extra or {})
    return env


@pytest.fixture
def worker_factory(broker_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[WorkerFactory]:
    """Start `rabbittask worker -A <app> <args...>` subprocesses; every one is stopped after the test.

    `prefix=` sets RT_TEST_PREFIX (the test app's queue prefix); the ledger directory is `tmp_path`;
    `wrap=` runs the worker under a command such as `ip netns exec NS` (tests/netns.py `Host.prefix`).
    """
    started: list[WorkerProcess] = []

    def start(
        app: str,
        *args: str,
        prefix: str = "",
        broker_url: str = broker_url,
        env: dict[str, str] | None = None,
        wrap: Sequence[str] = (),
    ) -> WorkerProcess:
        extra = {"RT_TEST_PREFIX": prefix, "RT_TEST_LEDGER": str(tmp_path), **(env or {})}
        log_path = tmp_path / f"worker-{len(started)}.log"
        w = WorkerProcess(["-A", app, *args], worker_env(broker_url, extra), log_path, wrap)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()
