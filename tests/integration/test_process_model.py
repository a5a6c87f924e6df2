"""The worker's process model with real processes and a real broker: kill, limits, signals, reloads."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from rabbittask import App
from tests import amqp
from tests.waiting import assert_stays, wait_until
from tests.workers import ROOT, gone, worker_env

APP = "tests.apps.supervised:app"


@pytest.fixture
def prefix(unique_name: str, amqp_cleanup: Any) -> str:
    amqp_cleanup.queue(f"{unique_name}.main")
    amqp_cleanup.queue(f"{unique_name}.main.dlq")
    return unique_name


@pytest.fixture
def app(prefix: str, broker_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    """The test app as the test process sees it (same tasks and queue as the worker's)."""
    monkeypatch.setenv("RT_TEST_PREFIX", prefix)
    monkeypatch.setenv("RABBITTASK_BROKER_URL", broker_url)
    for name in [m for m in sys.modules if m == "tests.apps.supervised"]:
        del sys.modules[name]
    from tests.apps.supervised import app

    yield app
    app.close()


class Ledger:
    """The lines the test app's tasks append: `<event> <tag> pid=<pid>`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[tuple[str, str, int]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().split("\n")[:-1]:  # complete lines only: a task may be writing one
            event, tag, pid = line.split()
            out.append((event, tag, int(pid.removeprefix("pid="))))
        return out

    def tags(self, event: str) -> Counter[str]:
        return Counter(tag for e, tag, _ in self.lines() if e == event)

    def pids(self, event: str, tag: str | None = None) -> list[int]:
        return [pid for e, t, pid in self.lines() if e == event and (tag is None or t == tag)]

    def wait(self, event: str, count: int, timeout_s: float = 30.0) -> None:
        wait_until(
            lambda: sum(self.tags(event).values()) >= count,
            timeout_s,
            lambda: f"ledger shows {sum(self.tags(event).values())} {event!r}, expected {count}",
        )


@pytest.fixture
def ledger(tmp_path: Path, prefix: str) -> Ledger:
    return Ledger(tmp_path / prefix)


def dead_letters(url: str, queue: str) -> list[pika.BasicProperties]:
    return [props for props, _ in amqp.get_all(url, f"{queue}.dlq")]


# -- crashes and kills ---------------------------------------------------------------------------------


def test_a_child_killed_mid_task_is_replaced_and_the_message_completes(app, prefix, ledger, worker_factory) -> None:
    w = worker_factory(APP, "-c", "1", prefix=prefix)
    w.wait_for_log("consuming from")
    # Given a task running in the only child
    app.tasks["sup.record"].delay("slow", sleep_s=1.0)
    ledger.wait("start", 1)
    victim = ledger.pids("start", "slow")[0]
    # When that child is killed with SIGKILL
    os.kill(victim, signal.SIGKILL)
    # Then the supervisor says so and starts a new child, which runs the message to the end
    w.wait_for_log("was killed by SIGKILL (out of memory?")
    ledger.wait("done", 1, timeout_s=20)
    assert ledger.pids("done", "slow")[0] != victim
    assert ledger.tags("start")["slow"] == 2
    amqp.wait_depth(app.settings.broker_url, f"{prefix}.main", 0)


def test_children_die_with_a_killed_supervisor_and_their_messages_come_back(
    app, prefix, ledger, worker_factory
) -> None:
    w = worker_factory(APP, "-c", "2", "--prefetch", "3", prefix=prefix)
    w.wait_for_log("consuming from", count=2)
    children = w.wait_for_children(2)
    # Given 6 messages held by two children (2 running, 4 prefetched), none acked
    for i in range(6):
        app.tasks["sup.record"].delay(f"m{i}", sleep_s=30)
    ledger.wait("start", 2)
    # When the supervisor is killed with SIGKILL
    os.kill(w.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    # Then every child is gone within 2 s, and all 6 messages are back in the queue
    wait_until(lambda: gone(children), 2.0, f"children {children} gone", interval_s=0.02)
    print(f"children gone {time.monotonic() - killed_at:.2f} s after the supervisor was killed")
    amqp.wait_depth(app.settings.broker_url, f"{prefix}.main", 6, timeout_s=10)


def test_a_broken_app_import_exits_non_zero_without_respawning(tmp_path, broker_url) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rabbittask", "worker", "-A", "tests.apps.broken:app", "-c", "2"],
        env=worker_env(broker_url),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "RuntimeError: this app is broken on purpose" in result.stderr
    assert "started child" not in result.stderr


def test_a_topology_conflict_in_the_children_halts_the_worker_with_exit_78(app, prefix, worker_factory) -> None:
    # Given the app's queue already exists as a classic queue (the app wants quorum)
    connection = amqp.connect(app.settings.broker_url)
    connection.channel().queue_declare(f"{prefix}.main", durable=True)
    connection.close()
    # When a worker starts, its children fail to declare it
    w = worker_factory(APP, "-c", "2", prefix=prefix)
    # Then the supervisor halts with the children's exit code instead of restarting them
    assert w.proc.wait(30) == 78
    log = w.log()
    assert "a restart would fail the same way" in log
    assert log.count("started child") == 2


# -- max tasks, memory -----------------------------------------------------------------------------------


def test_max_tasks_per_child_replaces_children_without_losing_a_task(app, prefix, ledger, worker_factory) -> None:
    w = worker_factory(APP, "-c", "2", "--max-tasks-per-child", "10", "--prefetch", "4", prefix=prefix)
    w.wait_for_log("consuming from", count=2)
    # When 200 tasks run under a limit of 10 per child
    with app.batch():
        for i in range(200):
            app.tasks["sup.record"].delay(f"t{i}")
    ledger.wait("done", 200, timeout_s=60)
    # Then every task ran exactly once, and about 20 children did the work, none above its limit
    assert ledger.tags("done") == Counter({f"t{i}": 1 for i in range(200)})
    per_child = Counter(ledger.pids("done"))
    assert 20 <= len(per_child) <= 22, per_child
    assert max(per_child.values()) == 10, per_child
    amqp.wait_depth(app.settings.broker_url, f"{prefix}.main", 0)
    log = w.log()
    assert log.count("is retiring; starting its successor") >= 19
    assert "handed" not in log  # a retiring child finishes what it holds: nothing was returned
    print(f"replacement: {replacement_gaps_ms(log)}")


def test_short_sync_tasks_move_to_the_event_loop_and_a_slow_run_sends_them_back(
    app, prefix, ledger, worker_factory
) -> None:
    # Given a worker whose sync tasks may run inline when all their runs stay under 50 ms
    w = worker_factory(APP, "--inline-ms", "50", "--prefetch", "8", prefix=prefix)
    w.wait_for_log("consuming from")
    where = app.tasks["sup.where"]
    # When 120 short tasks run, then a slow one, then 30 short ones
    with app.batch():
        for i in range(120):
            where.delay(f"a{i}")
    ledger.wait("on-MainThread", 1, timeout_s=30)
    with app.batch():
        where.delay("slow", sleep_s=0.2)
        for i in range(30):
            where.delay(f"b{i}")
    # Then every task ran once (asyncio.run() worked wherever it ran), in order, one at a time
    lines = wait_lines(ledger, 151)
    assert Counter(tag for _, tag, _ in lines) == Counter(
        [f"a{i}" for i in range(120)] + ["slow"] + [f"b{i}" for i in range(30)]
    )
    threads = {tag: event.removeprefix("on-") for event, tag, _ in lines}
    # the first 50 in the task thread, later ones on the event loop (the main thread)
    assert all(threads[f"a{i}"] == "rabbittask-task-0" for i in range(50)), threads
    assert "MainThread" in {threads[f"a{i}"] for i in range(50, 120)}
    # and after the slow run, the task went back to the thread for more than the 30 runs that followed
    assert [threads[f"b{i}"] for i in range(30)] == ["rabbittask-task-0"] * 30
    assert "back to the task thread" in w.log()


def wait_lines(ledger: Ledger, count: int, timeout_s: float = 30.0) -> list[tuple[str, str, int]]:
    return wait_until(
        lambda: lines if len(lines := ledger.lines()) >= count else None,
        timeout_s,
        lambda: f"ledger has {len(ledger.lines())} lines, expected {count}",
    )


LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) \w+ \[\d+\] [\w.]+: (.*)$", re.M)


def replacement_gaps_ms(log: str) -> str:
    """From the supervisor's 'is retiring' to the next child's 'consuming from': median and max, in ms."""
    events = []
    for m in LOG_LINE.finditer(log):
        at = time.mktime(time.strptime(m[1], "%Y-%m-%d %H:%M:%S")) + int(m[2]) / 1000
        if "is retiring" in m[3]:
            events.append((at, "retiring"))
        elif m[3].startswith("consuming from"):
            events.append((at, "consuming"))
    gaps = sorted(
        (next(u for u, k in events[i + 1 :] if k == "consuming") - at) * 1000
        for i, (at, kind) in enumerate(events)
        if kind == "retiring" and any(k == "consuming" for _, k in events[i + 1 :])
    )
    return f"{len(gaps)} successors consuming after median {gaps[len(gaps) // 2]:.0f} ms, max {gaps[-1]:.0f} ms"


def test_a_child_above_the_memory_limit_is_replaced(app, prefix, ledger, worker_factory) -> None:
    w = worker_factory(APP, "-c", "1", "--prefetch", "1", "--max-memory-per-child", "150MB", prefix=prefix)
    w.wait_for_log("consuming from")
    # When a task leaks 50 MB per call
    for i in range(6):
        app.tasks["sup.leak"].delay(f"l{i}", mb=50)
    ledger.wait("done", 6)
    # Then the child retires once it is above 150 MB, and its successor runs the rest
    w.wait_for_log("above --max-memory-per-child 150 MB")
    assert len(set(ledger.pids("done"))) >= 2
    assert ledger.tags("done") == Counter({f"l{i}": 1 for i in range(6)})


# -- long tasks and time limits ------------------------------------------------------------------------


def test_a_sync_task_longer_than_the_heartbeat_keeps_its_connection(app, prefix, ledger, worker_factory) -> None:
    # Given a 1 s heartbeat: the broker closes a connection that is silent for about 2 s
    w = worker_factory(APP, "-c", "1", prefix=prefix, env={"RABBITTASK_HEARTBEAT_S": "1"})
    w.wait_for_log("consuming from")
    # When a sync task sleeps 5 s, then another task comes
    app.tasks["sup.record"].delay("long", sleep_s=5.0)
    app.tasks["sup.record"].delay("next")
    ledger.wait("done", 2, timeout_s=20)
    # Then the connection survived: no reconnect, each ran once, and both were acked
    assert "reconnecting" not in w.log()
    assert ledger.tags("start") == Counter({"long": 1, "next": 1})
    amqp.wait_depth(app.settings.broker_url, f"{prefix}.main", 0)


def test_a_sync_task_past_its_hard_time_limit_is_dead_lettered_and_the_worker_goes_on(
    app, prefix, ledger, worker_factory
) -> None:
    w = worker_factory(APP, "-c", "1", prefix=prefix)
    w.wait_for_log("consuming from")
    first_child = w.wait_for_children(1)
    # When a task with time_limit=1 s never returns, and another task waits behind it
    app.tasks["sup.stuck"].delay("s1")
    app.tasks["sup.record"].delay("after")
    # Then the other task runs (in the child that replaced the stuck one)
    ledger.wait("done", 1, timeout_s=20)
    assert ledger.pids("done", "after") != first_child
    # And the stuck message is in the DLQ with the reason, not redelivered
    url = app.settings.broker_url
    wait_until(lambda: amqp.depth(url, f"{prefix}.main.dlq") == 1, 10, "one dead letter")
    (props,) = dead_letters(url, f"{prefix}.main")
    assert props.headers["rt-reason"] == "time limit"
    assert props.headers["rt-exc-type"] == "TimeLimitExceeded"
    assert "time_limit of 1 s" in props.headers["rt-exc-message"]

    def ran_once_and_queue_empty() -> bool:
        return ledger.tags("start")["s1"] == 1 and amqp.depth(url, f"{prefix}.main") == 0

    assert_stays(ran_once_and_queue_empty, 1.5, "the stuck task is not run again")
    assert ledger.tags("start")["s1"] == 1
    assert amqp.depth(url, f"{prefix}.main") == 0


def test_soft_limits_reach_sync_tasks_and_limits_cancel_async_tasks(app, prefix, ledger, worker_factory) -> None:
    w = worker_factory(APP, "-c", "1", prefix=prefix)
    w.wait_for_log("consuming from")
    child = w.wait_for_children(1)
    # A sync task catches SoftTimeLimitExceeded at 0.5 s and returns
    assert app.tasks["sup.soft"].call("soft", timeout=10) == "cleaned up"
    assert ledger.tags("soft") == Counter({"soft": 1})
    # An async task is cancelled at its hard limit and dead-lettered, in the same child
    app.tasks["sup.asleep"].delay("a1")
    url = app.settings.broker_url
    wait_until(lambda: amqp.depth(url, f"{prefix}.main.dlq") == 1, 10, "one dead letter")
    (props,) = dead_letters(url, f"{prefix}.main")
    assert props.headers["rt-reason"] == "time limit"
    assert w.children() == child


# -- signals ---------------------------------------------------------------------------------------------


def test_sigterm_lets_running_tasks_finish_and_exits_0(app, prefix, ledger, worker_factory) -> None:
    w = worker_factory(APP, "-c", "3", "--shutdown-timeout", "20", prefix=prefix)
    w.wait_for_log("consuming from", count=3)
    # Given 3 tasks running, one per child
    for i in range(3):
        app.tasks["sup.record"].delay(f"r{i}", sleep_s=1.5)
    ledger.wait("start", 3)
    # When the supervisor gets SIGTERM
    started = time.monotonic()
    w.signal(signal.SIGTERM)
    # Then all 3 finish and are acked, and the worker exits 0
    assert w.proc.wait(30) == 0
    print(f"warm shutdown with 3 running tasks took {time.monotonic() - started:.2f} s")
    assert ledger.tags("done") == Counter({"r0": 1, "r1": 1, "r2": 1})
    assert amqp.depth(app.settings.broker_url, f"{prefix}.main") == 0


def test_sighup_replaces_every_child_without_losing_a_message(app, prefix, ledger, worker_factory) -> None:
    w = worker_factory(APP, "-c", "2", prefix=prefix)
    w.wait_for_log("consuming from", count=2)
    before = set(w.wait_for_children(2))
    # Given a stream of tasks
    with app.batch():
        for i in range(60):
            app.tasks["sup.record"].delay(f"h{i}", sleep_s=0.05)
    ledger.wait("done", 5)
    # When the supervisor gets SIGHUP
    w.signal(signal.SIGHUP)
    w.wait_for_log("retired", count=2, timeout_s=30)
    # Then every child was replaced, and every task ran exactly once
    ledger.wait("done", 60, timeout_s=30)
    after = set(w.wait_for_children(2))
    assert not before & after
    assert ledger.tags("done") == Counter({f"h{i}": 1 for i in range(60)})
    assert "rolling restart stopped" not in w.log()


def test_a_time_limit_above_the_consumer_timeout_warns_and_strict_refuses(prefix, broker_url) -> None:
    cmd = [sys.executable, "-m", "rabbittask", "worker", "-A", APP, "--consumer-timeout", "0.5", "--strict-timeouts"]
    env = worker_env(broker_url, {"RT_TEST_PREFIX": prefix})
    result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 78
    assert "task 'sup.stuck': time_limit 1 s is not shorter than the broker's consumer_timeout (0.5 s)" in result.stderr
    assert "raise consumer_timeout in rabbitmq.conf" in result.stderr
    assert "refusing to start (--strict-timeouts)" in result.stderr


RELOADABLE = """
import os
from rabbittask import App

app = App("reload-tests")


@app.task(queue=os.environ["RT_TEST_PREFIX"] + ".main", name="reload.version")
def version() -> str:
    return {version!r}
"""


def test_sighup_reloads_the_apps_code(prefix, broker_url, tmp_path, worker_factory) -> None:
    # Given a worker running an app module that returns "v1"
    module = f"reloadable_{prefix.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(RELOADABLE.format(version="v1"))
    env = {"PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"}
    w = worker_factory(f"{module}:app", "-c", "1", prefix=prefix, env=env)
    w.wait_for_log("consuming from")
    caller = App("reload-tests", broker_url=broker_url)
    version = caller.task(queue=f"{prefix}.main", name="reload.version")(lambda: "")
    try:
        assert version.call(timeout=10) == "v1"
        # When the code changes and the supervisor gets SIGHUP
        (tmp_path / f"{module}.py").write_text(RELOADABLE.format(version="v2, reloaded"))
        w.signal(signal.SIGHUP)
        w.wait_for_log("retired", timeout_s=20)
        # Then the new child runs the new code
        assert version.call(timeout=10) == "v2, reloaded"
    finally:
        caller.close()
