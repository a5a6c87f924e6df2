"""Start real worker processes in tests: the plugin's `WorkerProcess`, with what the suite's tests add to it."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import psutil
import pytest

from rabbittask.testing import workers as testing_workers
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent


class WorkerProcess(testing_workers.WorkerProcess):
    """The plugin's `WorkerProcess` (rabbittask.testing.workers), started in the repository, with its children."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, wrap: Sequence[str] = ()) -> None:
        super().__init__(args, env, log_path, wrap, cwd=ROOT)  # wrap: e.g. `ip netns exec NS`

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
    return testing_workers.worker_env(broker_url, extra, path=[ROOT])


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
