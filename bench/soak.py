"""`make soak`: a mixed workload on a 3-node cluster, workers on 2 hosts, under a seeded chaos loop.

    python -m bench.soak [--minutes 10] [--tasks 100000] [--seed N]

Every broker node and every worker runs in a network namespace of its own (tests/netns.py; root).
Workloads (`WORKLOADS`: add one by writing a class with `name`, `run` and `figures`) publish for the
first 80% of the time while the chaos loop picks a fault every few seconds (`FAULTS`, seeded, each
logged with its time). At the end everything is healed, confirmed work is given time to finish, and
the ledger (tests/faults/ledger.py) judges: lost must be 0, every duplicate explained by a
redelivery or a re-send, no countdown early, long countdowns still waiting. Exit status 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.soak_beat import BeatReplica, Beats, kill_beat
from bench.soak_report import dead_letters, ladder_depth, print_tables
from bench.soak_work import RateLimited, Retries, Revokes, Workflows, register
from rabbittask import App, RabbitTaskError
from rabbittask.testing import RabbitNode
from tests.faults.cluster import form_cluster, urls
from tests.faults.helpers import APP, ledger_app
from tests.faults.ledger import Ledger
from tests.netns import Host, Net
from tests.waiting import wait_until
from tests.workers import WorkerProcess, worker_env

HEARTBEAT_S = 5


@dataclass
class Soak:
    """What the workloads and faults act on, and what they record."""

    app: App
    ledger: Ledger
    nodes: list[RabbitNode]
    node_hosts: list[Host]
    net: Net
    start_worker: Callable[[int], WorkerProcess]
    workers: list[WorkerProcess]
    rng: random.Random
    stop: threading.Event = field(default_factory=threading.Event)
    due: dict[str, float] = field(default_factory=dict)  # countdown key -> due time
    long_waiting: set[str] = field(default_factory=set)  # 1 h countdowns: must not run during the soak
    faults: list[tuple[float, float, str]] = field(default_factory=list)  # start, end, what
    rss: dict[str, list[int]] = field(default_factory=lambda: {"supervisor": [], "child": []})
    publishing_until: float = float("inf")  # stalls are measured while work was being sent
    directory: Path = Path()  # the ledger's files and every process's log
    start_beat: Callable[[int], WorkerProcess] | None = None
    beats: list[WorkerProcess] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # broken promises the workloads found
    planned: dict[str, int] = field(default_factory=dict)  # dead-letter reason -> how many the workloads planned
    retry_redelivered: set[str] = field(default_factory=set)  # retried tasks an attempt of was redelivered or re-sent


class Plain:
    """Plain tasks, alone and in batches of up to 50 (`app.batch()`, confirms pipelined)."""

    name = "plain+batches"

    def __init__(self, total: int) -> None:
        self.total = total

    def run(self, soak: Soak, seconds: float) -> None:
        work, sent, started = soak.app.tasks["ledger.work"], 0, time.monotonic()
        while sent < self.total and not soak.stop.is_set():
            size = soak.rng.choice([1, 1, 1, 10, 50])
            keys = [f"p{sent + i}" for i in range(min(size, self.total - sent))]
            try:
                with soak.app.batch():
                    for key in keys:
                        work.apply_async((key,), message_id=key)
                soak.ledger.confirmed.update(keys)
            except RabbitTaskError:
                soak.ledger.failed.update(keys)  # may or may not be enqueued: not counted as confirmed
            sent += len(keys)
            ahead = sent / self.total * seconds - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(min(ahead, 1.0))

    def figures(self, soak: Soak) -> dict[str, Any]:
        return {}


class Countdowns:
    """Countdowns of 1-60 s that must run, never early; and 1 h ones that must still wait at the end."""

    name = "countdowns"

    def run(self, soak: Soak, seconds: float) -> None:
        work, n = soak.app.tasks["ledger.work"], 0
        while not soak.stop.wait(0.5):
            long = n % 50 == 0
            countdown = 3600.0 if long else soak.rng.uniform(1, min(60, max(1, seconds / 4)))
            key = f"c{n}"
            n += 1
            due = time.time() + countdown
            try:
                work.apply_async((key,), message_id=key, countdown=countdown)
            except RabbitTaskError:
                continue
            if long:
                soak.long_waiting.add(key)
            else:
                soak.ledger.confirmed.add(key)
                soak.due[key] = due

    def figures(self, soak: Soak) -> dict[str, Any]:
        first: dict[str, float] = {}
        for run in soak.ledger.runs():
            first.setdefault(run.key, run.start)
        early = [k for k, due in soak.due.items() if k in first and first[k] < due - 0.001]
        ran_long = [k for k in soak.long_waiting if k in first]
        return {"countdowns": len(soak.due), "early": len(early), "long waiting": len(soak.long_waiting),
                "long ran early": len(ran_long)}  # fmt: skip


class Rpc:
    """`.call()` round trips (direct reply-to); a call that times out during a fault is not counted as confirmed."""

    name = "rpc"

    def __init__(self) -> None:
        self.ok = self.failed = 0

    def run(self, soak: Soak, seconds: float) -> None:
        work, n = soak.app.tasks["ledger.work"], 0
        while not soak.stop.wait(0.2):
            key = f"r{n}"
            n += 1
            try:
                assert work.call(key, timeout=20) == key
                soak.ledger.confirmed.add(key)
                self.ok += 1
            except (RabbitTaskError, TimeoutError):
                soak.ledger.failed.add(key)
                self.failed += 1

    def figures(self, soak: Soak) -> dict[str, Any]:
        return {"rpc ok": self.ok, "rpc failed (fault)": self.failed}


def _pids(w: WorkerProcess) -> tuple[int, list[int]]:
    return w.proc.pid, w.children()


def kill_child(soak: Soak) -> str:
    w = soak.rng.choice(soak.workers)
    _, children = _pids(w)
    if not children:
        return "kill -9 child: none alive"
    pid = soak.rng.choice(children)
    os.kill(pid, signal.SIGKILL)
    return f"kill -9 child {pid}"


def kill_supervisor(soak: Soak) -> str:
    i = soak.rng.randrange(len(soak.workers))
    w = soak.workers[i]
    os.kill(w.proc.pid, signal.SIGKILL)
    w.stop()
    soak.workers[i] = soak.start_worker(i)
    return f"kill -9 supervisor {w.proc.pid} (a new worker started on host {i})"


def stop_worker(soak: Soak) -> str:
    w = soak.rng.choice(soak.workers)
    procs = [w.proc.pid, *w.children()]
    for pid in procs:
        os.kill(pid, signal.SIGSTOP)
    time.sleep(HEARTBEAT_S * 2 + 2)
    for pid in procs:
        os.kill(pid, signal.SIGCONT)
    return f"SIGSTOP worker {w.proc.pid} for {HEARTBEAT_S * 2 + 2} s (heartbeat {HEARTBEAT_S} s)"


def kill_node(soak: Soak) -> str:
    node = soak.rng.choice(soak.nodes[1:])  # the first holds the cluster's name for joins
    node.kill()
    time.sleep(2)
    node.start()
    return f"kill -9 broker node {node.nodename}, restarted"


def close_connections(soak: Soak) -> str:
    node = soak.rng.choice(soak.nodes)
    node.close_all_connections("soak chaos")
    return f"close_connection of every client on {node.nodename}"


def memory_alarm(soak: Soak) -> str:
    node = soak.rng.choice(soak.nodes)
    node.ctl("set_vm_memory_high_watermark", "0.000001")
    time.sleep(5)
    node.ctl("set_vm_memory_high_watermark", "0.4")
    return f"memory alarm on {node.nodename} for 5 s"


def partition(soak: Soak) -> str:
    i = soak.rng.randrange(len(soak.nodes))
    soak.net.cut(soak.node_hosts[i])
    time.sleep(10)
    soak.net.heal(soak.node_hosts[i])
    return f"partition of {soak.nodes[i].nodename} for 10 s"


FAULTS: list[Callable[[Soak], str]] = [
    kill_child, kill_supervisor, stop_worker, kill_node, close_connections, memory_alarm, partition, kill_beat,
]  # fmt: skip


def chaos(soak: Soak, every_s: float) -> None:
    while not soak.stop.wait(soak.rng.uniform(every_s / 2, every_s * 1.5)):
        fault = soak.rng.choice(FAULTS)
        started = time.time()
        try:
            what = fault(soak)
        except Exception as e:  # noqa: BLE001 - a fault that could not be injected is logged, the soak goes on
            what = f"{fault.__name__} failed: {e}"
        soak.faults.append((started, time.time(), what))
        print(f"[soak] {time.strftime('%H:%M:%S')} {what}", flush=True)


def sample_rss(soak: Soak) -> None:
    while not soak.stop.wait(5):
        for w in soak.workers:
            for kind, pids in (("supervisor", [w.proc.pid]), ("child", w.children())):
                for pid in pids:
                    try:
                        soak.rss[kind].append(psutil.Process(pid).memory_info().rss)
                    except psutil.Error:
                        pass


WORKLOADS: list[Callable[[int], Any]] = [
    Plain, lambda total: Countdowns(), lambda total: Rpc(), lambda total: Retries(), lambda total: Revokes(),
    lambda total: RateLimited(), lambda total: Workflows(), lambda total: Beats(),
]  # fmt: skip


def run(minutes: float, tasks: int, seed: int, every_s: float) -> int:
    """The soak: its exit status (0 passed, 1 failed), its report printed."""
    rng = random.Random(seed)
    print(f"[soak] seed {seed}: {minutes:g} min, {tasks} plain tasks, a fault every ~{every_s:g} s", flush=True)
    with Net() as net:
        node_hosts = [net.add_host(f"n{i}") for i in range(3)]
        worker_hosts = [net.add_host(f"w{i}") for i in range(2)]
        cookie = secrets.token_hex(16)
        nodes = [RabbitNode(cookie=cookie, netns=h.netns, host=h.address) for h in node_hosts]
        directory = Path(tempfile.mkdtemp(prefix="rt-soak-"))
        prefix = f"soak-{secrets.token_hex(3)}"
        env = {"RT_LEDGER_DIR": str(directory), "RT_TEST_PREFIX": prefix, "RABBITTASK_HEARTBEAT_S": str(HEARTBEAT_S)}
        env["RT_SOAK"] = "1"  # the ledger app's soak-only task (ledger.limited)

        def start_worker(i: int) -> WorkerProcess:
            order = nodes[i % 3 :] + nodes[: i % 3]
            return WorkerProcess(["-A", APP, "-c", "2"], worker_env(urls(order), env),
                                 directory / f"worker-{i}-{time.time():.0f}.log", worker_hosts[i].prefix)  # fmt: skip

        def start_beat(i: int) -> WorkerProcess:
            order = nodes[i % 3 :] + nodes[: i % 3]
            return BeatReplica(["-A", APP, "--poll-s", "1"], worker_env(urls(order), {**env, "RT_SOAK_BEAT": "1"}),
                               directory / f"beat-{i}-{time.time():.0f}.log", worker_hosts[i].prefix)  # fmt: skip

        try:
            form_cluster(nodes)
            app = ledger_app(urls(nodes), prefix, heartbeat_s=2, publish_timeout_s=5, connect_timeout_s=2)
            register(app, prefix)
            app.declare()
            soak = Soak(app, Ledger(directory), nodes, node_hosts, net, start_worker, [], rng, directory=directory)
            soak.start_beat = start_beat
            soak.workers = [start_worker(i) for i in range(2)]
            return _run(soak, minutes * 60, tasks, every_s, prefix)
        finally:
            for node in nodes:
                node.cleanup()


def _run(soak: Soak, seconds: float, tasks: int, every_s: float, prefix: str) -> int:
    workloads = [make(tasks) for make in WORKLOADS]
    threads = [threading.Thread(target=w.run, args=(soak, seconds * 0.8), daemon=True) for w in workloads]
    threads += [threading.Thread(target=chaos, args=(soak, every_s), daemon=True)]
    threads += [threading.Thread(target=sample_rss, args=(soak,), daemon=True)]
    started = time.monotonic()
    for t in threads:
        t.start()
    soak.stop.wait(seconds * 0.8)
    soak.stop.set()
    soak.publishing_until = time.time()
    for t in threads:
        t.join(timeout=60)
    for host in soak.node_hosts:
        soak.net.heal(host)
    for node in soak.nodes:
        if not node.running:
            node.start()
    soak.ledger.wait_executed(soak.ledger.confirmed, timeout_s=max(120.0, seconds * 0.2))
    with contextlib.suppress(AssertionError):  # workflows' last steps, and the planned dead letters
        wait_until(lambda: all(w.done(soak) for w in workloads if hasattr(w, "done")), 90, interval_s=1)
    time.sleep(2)  # the last dead letters reach their queue
    figures: dict[str, Any] = {}
    new_rows: list[tuple[str, str]] = []
    for w in workloads:
        found = w.figures(soak)
        figures.update(found)
        new_rows += [(k, v) for k, v in found.items() if isinstance(v, str)]
    report = soak.ledger.report("soak")
    retried = [k for k in report.unexplained if k in soak.retry_redelivered]  # an attempt was redelivered or re-sent
    report.unexplained = [k for k in report.unexplained if k not in soak.retry_redelivered]
    long_left = ladder_depth(soak.nodes[0])
    reasons = dead_letters(soak.nodes[0], f"{prefix}.work.dlq")
    for reason, n in dead_letters(soak.nodes[0], f"{prefix}.limited.dlq").items():
        reasons[reason] = reasons.get(reason, 0) + n
    unplanned = set(reasons) - set(soak.planned) - {"?", "delivery limit"}
    short = {r: (reasons.get(r, 0), n) for r, n in soak.planned.items() if reasons.get(r, 0) < n}
    for w in soak.workers:
        w.stop()
    soak.app.close()
    rows = [
        ("duration", f"{(time.monotonic() - started) / 60:.1f} min"),
        ("faults", str(len(soak.faults))),
        ("confirmed", str(report.confirmed)),
        ("executed", str(report.executed)),
        ("lost", str(len(report.lost))),
        ("duplicates", f"{report.duplicates} (redelivered {report.redelivered}, re-sent {report.resent}, "
                       f"a retry after a redelivered or re-sent attempt {len(retried)}, "
                       f"unexplained {len(report.unexplained)})"),
        ("dead-lettered", ", ".join(f"{k}: {v} (planned {soak.planned.get(k, 0)})" for k, v in reasons.items()) or "0"),
        ("early delays", f"{figures.get('early', 0)} of {figures.get('countdowns', 0)} countdowns"),
        ("1 h countdowns", f"{figures.get('long waiting', 0)} sent, {figures.get('long ran early', 0)} ran, "
                           f"{long_left} message(s) still in the ladder"),
        ("rpc calls", f"{figures.get('rpc ok', 0)} ok, {figures.get('rpc failed (fault)', 0)} failed during faults"),
        *new_rows,
    ]  # fmt: skip
    print_tables(soak, rows)
    bad = (report.lost or report.unexplained or figures.get("early") or figures.get("long ran early")
           or unplanned or short or soak.problems)  # fmt: skip
    if bad:
        print(
            f"[soak] FAILED: lost {report.lost[:10]}, unexplained {report.unexplained[:10]}, {figures}, "
            f"dead letters {reasons} (unplanned {unplanned}, fewer than planned {short}), {soak.problems}"
        )
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", "10")))
    parser.add_argument("--tasks", type=int, default=int(os.environ.get("SOAK_TASKS", "100000")))
    parser.add_argument("--seed", type=int, default=int(os.environ.get("SOAK_SEED", "0")) or secrets.randbelow(10**6))
    parser.add_argument("--every", type=float, default=8.0, help="seconds between faults, on average")
    args = parser.parse_args()
    return run(args.minutes, args.tasks, args.seed, args.every)


if __name__ == "__main__":
    sys.exit(main())
