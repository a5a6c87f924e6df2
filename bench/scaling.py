"""`make scaling`: drain rate of a quorum task queue on a 3-node cluster with workers on 1, 2 and 3 hosts.

    python -m bench.scaling [--n 6000] [--reps 3] [--prefetch 100]

Every broker node and every worker runs in a network namespace of its own (tests/netns.py; needs
root and iproute2). Each round fills a fresh queue with `--n` no-op ledger tasks, starts one
worker (one child) on each of k hosts, each preferring another node, and times the drain from the
first task's start to the last one's end; rounds are interleaved (1, 2, 3, 1, 2, 3, ...) and the
median of `--reps` is reported. Exits 1 if any confirmed task did not run: adding a host
must never lose work. On this 2-core machine the brokers and workers share the cores, so the rate
shows the cost of the hop between nodes more than the gain of a host.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rabbittask.testing import RabbitNode
from tests.faults.cluster import form_cluster, ledger_app, urls
from tests.faults.helpers import APP
from tests.faults.ledger import Ledger
from tests.netns import Host, Net
from tests.workers import WorkerProcess, worker_env


def drain_round(net_hosts: list[Host], nodes: list[RabbitNode], hosts: int, n: int, prefetch: int) -> tuple[float, int]:
    """Drain `n` tasks with workers on `hosts` hosts; return (tasks per second, lost)."""
    prefix = f"scale{hosts}-{secrets.token_hex(3)}"
    directory = Path(tempfile.mkdtemp(prefix="rt-scaling-"))
    ledger = Ledger(directory)
    app = ledger_app(urls(nodes), prefix)
    work = app.tasks["ledger.work"]
    with app.batch():
        for i in range(n):
            work.apply_async((f"k{i}",), message_id=f"k{i}")
    ledger.confirmed.update(f"k{i}" for i in range(n))
    env = {"RT_LEDGER_DIR": str(directory), "RT_TEST_PREFIX": prefix, "RABBITTASK_HEARTBEAT_S": "5"}
    workers = [
        WorkerProcess(
            ["-A", APP, "-c", "1", "--prefetch", str(prefetch)],
            worker_env(urls(nodes[i % 3 :] + nodes[: i % 3]), env),
            directory / f"worker-{i}.log",
            net_hosts[i].prefix,
        )
        for i in range(hosts)
    ]
    try:
        ledger.wait_executed(ledger.confirmed, timeout_s=300)
    finally:
        for w in workers:
            w.stop()
    records = ledger.records()
    first = min(float(r["t"]) for r in records if r["event"] == "start")  # type: ignore[arg-type]
    last = max(float(r["t"]) for r in records if r["event"] == "end")  # type: ignore[arg-type]
    report = ledger.report(f"drain with workers on {hosts} host(s)")
    print(report.line())
    app.close()
    return n / (last - first), len(report.lost)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=6000, help="tasks per round")
    parser.add_argument("--reps", type=int, default=3, help="rounds per host count (the median is reported)")
    parser.add_argument("--prefetch", type=int, default=100)
    args = parser.parse_args()
    with Net() as net:
        node_hosts = [net.add_host(f"n{i}") for i in range(3)]
        worker_hosts = [net.add_host(f"w{i}") for i in range(3)]
        cookie = secrets.token_hex(16)
        nodes = [RabbitNode(cookie=cookie, netns=h.netns, host=h.address) for h in node_hosts]
        try:
            started = time.monotonic()
            form_cluster(nodes)
            print(f"cluster of 3 nodes in namespaces formed in {time.monotonic() - started:.1f} s")
            rates: dict[int, list[float]] = {1: [], 2: [], 3: []}
            lost = 0
            for _ in range(args.reps):
                for hosts, runs in rates.items():
                    rate, lost_now = drain_round(worker_hosts, nodes, hosts, args.n, args.prefetch)
                    runs.append(rate)
                    lost += lost_now
        finally:
            for node in nodes:
                node.cleanup()
    for hosts, runs in rates.items():
        each = ", ".join(f"{r:,.0f}" for r in runs)
        print(
            f"[scaling] workers on {hosts} host(s): {statistics.median(runs):,.0f} tasks/s median "
            f"({each}; {args.n} tasks, 1 child each)"
        )
    if lost:
        print(f"[scaling] {lost} confirmed task(s) never ran", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
