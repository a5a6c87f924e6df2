"""Supervisor logic with fork, waitpid, kill and the clock patched: what each exit and message leads to."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from rabbittask import App
from rabbittask.worker import supervisor as sup_module
from rabbittask.worker.options import WorkerOptions
from rabbittask.worker.process import READY, RETIRING
from rabbittask.worker.supervisor import Halt, Supervisor, backoff_s, describe_exit

REAL_PIPE = os.pipe  # the fixture patches os.pipe itself (the supervisor module's `os` is the os module)


def exited(code: int) -> int:
    """A waitpid status for a normal exit with `code`."""
    return code << 8


def killed(sig: signal.Signals) -> int:
    """A waitpid status for a death by `sig`."""
    return int(sig)


@dataclass
class FakeOs:
    """Stands in for fork/waitpid/kill and the clock; keeps each child's end of its pipe to talk as it."""

    now: float = 1000.0
    next_pid: int = 100
    forks: list[int] = field(default_factory=list)
    exits: list[tuple[int, int]] = field(default_factory=list)
    kills: list[tuple[int, int]] = field(default_factory=list)
    child_ends: dict[int, int] = field(default_factory=dict)
    _last_write: int = -1

    def pipe(self) -> tuple[int, int]:
        r, w = REAL_PIPE()
        self._last_write = os.dup(w)
        return r, w

    def fork(self) -> int:
        self.next_pid += 1
        self.forks.append(self.next_pid)
        self.child_ends[self.next_pid] = self._last_write
        return self.next_pid

    def waitpid(self, pid: int, options: int) -> tuple[int, int]:
        if pid == -1:
            return self.exits.pop(0) if self.exits else (0, 0)
        return pid, killed(signal.SIGKILL)

    def kill(self, pid: int, sig: int) -> None:
        self.kills.append((pid, sig))

    def say(self, pid: int, what: bytes) -> None:
        os.write(self.child_ends[pid], what)

    def close(self) -> None:
        for fd in self.child_ends.values():
            os.close(fd)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOs]:
    fake = FakeOs()
    monkeypatch.setattr(sup_module.os, "fork", fake.fork)
    monkeypatch.setattr(sup_module.os, "pipe", fake.pipe)
    monkeypatch.setattr(sup_module.os, "waitpid", fake.waitpid)
    monkeypatch.setattr(sup_module.os, "kill", fake.kill)
    monkeypatch.setattr(sup_module.time, "monotonic", lambda: fake.now)
    yield fake
    fake.close()


def supervisor(concurrency: int = 2, **kwargs: object) -> Supervisor:
    app = App("unit")

    @app.task(queue="q")
    def noop() -> None: ...

    sup = Supervisor(app, ["q"], WorkerOptions(concurrency=concurrency, shutdown_timeout_s=0), **kwargs)  # type: ignore[arg-type]
    sup._wake_r, sup._wake_w = REAL_PIPE()  # what _init_signals makes, without touching the test's signals
    return sup


def test_backoff_doubles_from_a_quarter_second_up_to_30_s() -> None:
    assert [backoff_s(n) for n in range(0, 5)] == [0.0, 0.25, 0.5, 1.0, 2.0]
    assert backoff_s(20) == 30.0


def test_a_sigkilled_child_is_described_as_a_likely_oom_kill() -> None:
    assert describe_exit(killed(signal.SIGKILL)) == "was killed by SIGKILL (out of memory? see `dmesg`)"
    assert describe_exit(killed(signal.SIGSEGV)) == "was killed by SIGSEGV"
    assert describe_exit(exited(3)) == "exited with code 3"


def test_the_supervisor_starts_the_configured_number_of_children(fake: FakeOs) -> None:
    sup = supervisor(concurrency=3)
    sup.manage()
    assert len(fake.forks) == 3 and set(sup.children) == set(fake.forks)
    assert sorted(c.number for c in sup.children.values()) == [1, 2, 3]
    sup.manage()
    assert len(fake.forks) == 3


def test_a_retiring_child_gets_its_successor_before_it_exits(fake: FakeOs) -> None:
    sup = supervisor(concurrency=2)
    sup.manage()
    first = fake.forks[0]
    # When a child says it is retiring
    fake.say(first, READY + RETIRING)
    sup._wait(0)
    sup.manage()
    # Then its successor is forked at once, while it still runs
    assert len(fake.forks) == 3 and first in sup.children
    # And when it exits, nothing else starts and it is no crash
    fake.exits.append((first, exited(0)))
    sup.reap()
    sup.manage()
    assert len(fake.forks) == 3 and sup.crashes == 0 and first not in sup.children


def test_a_configuration_error_in_a_child_halts_with_its_exit_code(fake: FakeOs) -> None:
    sup = supervisor()
    sup.manage()
    fake.exits.append((fake.forks[0], exited(78)))
    with pytest.raises(Halt) as halt:
        sup.reap()
    assert halt.value.code == 78 and "a restart would fail the same way" in halt.value.reason


def test_crashes_at_start_up_back_off_and_say_why(fake: FakeOs, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    sup = supervisor(concurrency=1)
    sup.manage()
    # When the child exits before it consumed
    fake.exits.append((fake.forks[-1], exited(1)))
    sup.reap()
    sup.manage()
    # Then no new child starts before the back-off, and the log says why
    assert len(fake.forks) == 1
    assert "exited with code 1 during start-up (1 crash(es) in a row" in caplog.text
    assert "next start in 0.25 s" in caplog.text
    fake.now += 0.25
    sup.manage()
    assert len(fake.forks) == 2
    # And a second crash doubles the wait
    fake.exits.append((fake.forks[-1], exited(1)))
    sup.reap()
    fake.now += 0.25
    sup.manage()
    assert len(fake.forks) == 2
    fake.now += 0.25
    sup.manage()
    assert len(fake.forks) == 3


def test_a_stable_child_killed_by_sigkill_is_restarted_at_once(fake: FakeOs, caplog: pytest.LogCaptureFixture) -> None:
    sup = supervisor(concurrency=1)
    sup.manage()
    pid = fake.forks[0]
    fake.say(pid, READY)
    sup._wait(0)
    fake.now += 60
    fake.exits.append((pid, killed(signal.SIGKILL)))
    sup.reap()
    sup.manage()
    assert len(fake.forks) == 2 and sup.crashes == 0
    assert "was killed by SIGKILL (out of memory?" in caplog.text


def test_the_crash_count_resets_once_a_new_child_consumed_for_a_while(fake: FakeOs) -> None:
    sup = supervisor(concurrency=1)
    sup.manage()
    fake.exits.append((fake.forks[-1], exited(1)))
    sup.reap()
    fake.now += 1
    sup.manage()
    fake.say(fake.forks[-1], READY)
    sup._wait(0)
    fake.now += 10
    sup.manage()
    assert sup.crashes == 0


def test_sighup_replaces_the_children_one_at_a_time(fake: FakeOs) -> None:
    sup = supervisor(concurrency=2, reload_app=lambda: sup.app)
    sup.manage()
    old = list(fake.forks)
    for pid in old:
        fake.say(pid, READY)
    sup._wait(0)
    # When SIGHUP comes
    sup.handle_hup()
    sup.manage()
    sup.manage()
    # Then one successor starts, and its predecessor keeps running until it consumes
    assert len(fake.forks) == 3 and fake.kills == []
    successor = fake.forks[-1]
    fake.say(successor, READY)
    sup._wait(0)
    assert fake.kills == [(old[0], signal.SIGUSR1)]  # retire: finish and ack what it holds
    # Then the next one
    sup.manage()
    assert len(fake.forks) == 4
    fake.say(fake.forks[-1], READY)
    sup._wait(0)
    assert fake.kills[-1] == (old[1], signal.SIGUSR1)
    assert sum(1 for c in sup.children.values() if not c.retiring) == 2


def test_a_failed_reload_keeps_the_running_children(fake: FakeOs, caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> App:
        raise SyntaxError("invalid syntax (tasks.py, line 3)")

    sup = supervisor(concurrency=1, reload_app=broken)
    sup.manage()
    sup.handle_hup()
    sup.manage()
    assert len(fake.forks) == 1
    assert "reloading the app failed, the children keep the code they run: invalid syntax" in caplog.text


def test_a_successor_that_crashes_stops_the_rolling_restart(fake: FakeOs) -> None:
    sup = supervisor(concurrency=1, reload_app=lambda: sup.app)
    sup.manage()
    old = fake.forks[0]
    sup.handle_hup()
    sup.manage()
    fake.exits.append((fake.forks[-1], exited(1)))
    sup.reap()
    assert not sup.children[old].retiring and fake.kills == []


def test_warm_shutdown_kills_children_that_outlive_the_timeout(fake: FakeOs, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sup_module, "KILL_GRACE_S", 0.0)
    sup = supervisor(concurrency=2)
    sup.manage()
    sup.stop(graceful=True)
    assert [sig for _, sig in fake.kills] == [signal.SIGTERM, signal.SIGTERM, signal.SIGKILL, signal.SIGKILL]
    assert sup.children == {} and sup.exit_code == 1


def test_warm_shutdown_of_children_that_finish_in_time_exits_0(fake: FakeOs) -> None:
    sup = supervisor(concurrency=2)
    sup.manage()
    fake.exits.extend((pid, exited(0)) for pid in fake.forks)
    sup.options = WorkerOptions(concurrency=2, shutdown_timeout_s=5)
    sup.stop(graceful=True)
    assert [sig for _, sig in fake.kills] == [signal.SIGTERM, signal.SIGTERM]
    assert sup.children == {} and sup.exit_code == 0


def test_the_restarts_metric_counts_crashes_and_retirements_but_not_config_errors_or_shutdowns(fake: FakeOs) -> None:
    sup = supervisor(concurrency=2)
    sup.manage()
    first, second = fake.forks
    fake.say(first, READY + RETIRING)
    sup._wait(0)
    assert sup._restart_reason(sup.children[first], exited(0)) == "retired"
    assert sup._restart_reason(sup.children[second], killed(signal.SIGKILL)) == "crashed"
    assert sup._restart_reason(sup.children[second], exited(78)) is None  # halts the worker instead
    sup._stopping = True
    assert sup._restart_reason(sup.children[second], killed(signal.SIGKILL)) is None
