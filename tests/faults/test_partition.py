"""A 3-node cluster whose nodes and workers are separate "hosts" (network namespaces on a bridge):
cutting one node's link for 10 s and 30 s under `pause_minority` loses nothing confirmed, work goes
on on the majority within net_ticktime + 2 x heartbeat + back-off, and the cut node rejoins and the
queues drain after healing (a node that hangs in boot instead of rejoining, an Erlang `global` issue
seen on 3.10.8/OTP 25.2, is restarted, as an operator would, and the report line says so).

Each broker node runs in a namespace of its own (long Erlang names on its IP, its own epmd), so
cutting its link stops Erlang distribution and AMQP alike, as a real partition does.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from rabbittask.testing import RabbitNode, broker_answers
from tests import netns
from tests.faults.cluster import Traffic, finish, form_cluster, ledger_app, queue_info, urls
from tests.faults.helpers import APP
from tests.faults.ledger import Ledger, Report, report_line
from tests.netns import Host, Net
from tests.waiting import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.cluster, pytest.mark.timeout(180)]

NET_TICKTIME_S = 4  # lowered on these throwaway nodes (default 60) to keep the scenario short
HEARTBEAT_S = 2  # ledger_env's RABBITTASK_HEARTBEAT_S
CONNECT_TIMEOUT_S = 3  # ledger_env's RABBITTASK_CONNECT_TIMEOUT_S
# A worker on the cut node notices after about 2 heartbeats (+ aiormq's check interval), then tries
# that node once more (a connect timeout) and the next one after its first back-off step.
BACKOFF_S = CONNECT_TIMEOUT_S + 1 + 2
RECOVERY_BOUND_S = NET_TICKTIME_S + 2 * HEARTBEAT_S + BACKOFF_S
# When the cut node led the queue, its followers wait before electing a new leader: Ra's "long"
# election timeout after a `noconnection` (5.0-5.5 s seen in the node logs on 3.10.8).
RA_ELECTION_S = 6
PARTITION_CONFIG = (f"net_ticktime = {NET_TICKTIME_S}", "cluster_partition_handling = pause_minority")


@dataclass
class NsCluster:
    """Broker nodes and worker hosts, each in a namespace of its own on one bridge."""

    net: Net
    nodes: list[RabbitNode]
    node_hosts: list[Host]
    worker_hosts: list[Host]


@pytest.fixture(scope="module")
def ns_cluster() -> Iterator[NsCluster]:
    """One cluster for both partition lengths (about 15 s to form); namespaces removed afterwards."""
    netns.require()
    with Net() as net:
        cookie = secrets.token_hex(16)
        node_hosts = [net.add_host(f"n{i}") for i in range(3)]
        worker_hosts = [net.add_host(f"w{i}") for i in range(3)]
        nodes = [RabbitNode(PARTITION_CONFIG, cookie=cookie, netns=h.netns, host=h.address) for h in node_hosts]
        try:
            form_cluster(nodes)
            yield NsCluster(net, nodes, node_hosts, worker_hosts)
        finally:
            for node in nodes:
                node.cleanup()


def rotated(nodes: list[RabbitNode], first: int) -> list[RabbitNode]:
    return nodes[first:] + nodes[:first]


def queue_messages(node: RabbitNode, queue: str) -> int:
    out = node.ctl("list_queues", "-q", "--no-table-headers", "name", "messages")
    counts = dict(line.split("\t") for line in out.splitlines() if "\t" in line)
    return int(counts.get(queue, "0"))


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    """`wait_until` every 0.5 s, through any error: a node that is still rejoining refuses CLI commands."""
    wait_until(predicate, timeout_s, what, interval_s=0.5, ignoring=(Exception,))


REJOIN_WAIT_S = 15


def rejoin(node: RabbitNode, majority: RabbitNode, queue: str) -> tuple[float, str]:
    """Wait for the healed node to rejoin with its queue member online; return the time taken and how.

    RabbitMQ 3.10 on Erlang 25.2 sometimes hangs in boot after a heal (Erlang's `global` stuck in a
    sync; the node logs "Global hang workaround"). The remedy an operator applies is a restart of
    that node; the test does the same after REJOIN_WAIT_S, and says so.
    """
    start = time.monotonic()

    def back() -> bool:
        return queue_info(majority, queue)["online"].count("@") == 3 and broker_answers(node.url)

    try:
        wait_for(back, REJOIN_WAIT_S, "rejoin")
        return time.monotonic() - start, ""
    except AssertionError:
        hang = "Global hang workaround" in node.log_file.read_text(errors="replace")
        node.kill()
        node.start()
        wait_for(back, 60, f"{node.nodename} rejoins with its queue member online after a restart")
        reason = "Erlang global hang" if hang else "no rejoin"
        return time.monotonic() - start, f" after a restart ({reason} for {REJOIN_WAIT_S} s)"


def starts(ledger: Ledger, pids: set[int] | None = None) -> list[float]:
    records = ledger.records()
    return sorted(float(r["t"]) for r in records if r["event"] == "start" and (pids is None or r["pid"] in pids))  # type: ignore[arg-type]


def longest_gap(times: list[float], begin: float, end: float) -> float:
    points = [begin] + [t for t in times if begin < t < end] + [end]
    return max(b - a for a, b in zip(points, points[1:], strict=False))


def resumed_at(times: list[float], after: float, gap_s: float = 1.0) -> float:
    """The first of `times` after `after` that ends a pause of at least `gap_s` (a worker back at work)."""
    previous = max((t for t in times if t <= after), default=after)
    for t in (t for t in times if t > after):
        if t - previous >= gap_s:
            return t
        previous = t
    return float("inf")


# The whole suite cuts the leader for 10 s; `make faults` (RT_PARTITION_LEADER_S=30) for 30 s, as specified.
LEADER_CUT_S = int(os.environ.get("RT_PARTITION_LEADER_S", "10"))


@pytest.mark.parametrize(("outage_s", "cut"), [(10, "follower"), (LEADER_CUT_S, "leader")])
def test_a_node_cut_off_pauses_and_the_majority_loses_nothing_and_recovers_in_bound(
    outage_s: int,
    cut: str,
    ns_cluster: NsCluster,
    ledger: Ledger,
    ledger_env: dict[str, str],
    worker_factory,
    unique_name: str,
    record_report: list[Report],
) -> None:
    c = ns_cluster
    queue = f"{unique_name}.work"
    wait_for(lambda: "3" in c.nodes[0].ctl("eval", "length(rabbit_nodes:all_running())."), 60, "3 running nodes")
    admin = ledger_app(urls(c.nodes), unique_name)
    admin.declare()
    admin.close()
    info = queue_info(c.nodes[0], queue)
    assert info["members"].count("@") == 3, info
    leader = next(i for i, n in enumerate(c.nodes) if n.nodename == info["leader"])
    # A follower's loss costs its clients a failover; the leader's also costs the queue an election.
    victim = leader if cut == "leader" else (leader + 1) % 3
    majority = rotated(c.nodes, victim)[1]
    bound_s = RECOVERY_BOUND_S + (RA_ELECTION_S if cut == "leader" else 0)
    # The publisher prefers the node that will be cut, so it has to fail over too.
    app = ledger_app(urls(rotated(c.nodes, victim)), unique_name)
    # Worker host i prefers node i: one of them is connected to the node that will be cut.
    workers = [
        worker_factory(
            APP, "-c", "1", "--prefetch", "20", env=ledger_env, broker_url=urls(rotated(c.nodes, i)), wrap=h.prefix
        )
        for i, h in enumerate(c.worker_hosts)
    ]
    for w in workers:
        w.wait_for_log("consuming from")
    on_victim = set(workers[victim].wait_for_children(1))
    with Traffic(app, ledger) as traffic:
        time.sleep(2)
        cut_at, cut_wall = time.monotonic(), time.time()
        c.net.cut(c.node_hosts[victim])
        time.sleep(outage_s)
        c.net.heal(c.node_hosts[victim])
        heal_wall = time.time()
        publish_stall_s = traffic.longest_stall_s(cut_at, time.monotonic())
        rejoin_s, how = rejoin(c.nodes[victim], majority, queue)
        time.sleep(1)  # traffic through the healed cluster
    stall_s = longest_gap(starts(ledger), cut_wall, heal_wall)
    failover_s = resumed_at(starts(ledger, on_victim), cut_wall) - cut_wall
    recovery_s = max(stall_s, failover_s, publish_stall_s)
    finish(
        ledger,
        f"{cut} cut off {outage_s} s, pause_minority (recovery {recovery_s:.2f} s after the cut, "
        f"rejoined {rejoin_s:.1f} s after heal{how})",
        record_report,
        heal_wall,
    )
    report_line(
        f"[partition] {cut} cut {outage_s} s: processing stall {stall_s:.2f} s, worker of the cut node back after "
        f"{failover_s:.2f} s, publish stall {publish_stall_s:.2f} s ({len(traffic.failures)} failed), rejoined "
        f"{rejoin_s:.1f} s after heal{how}; bound {bound_s} s = net_ticktime {NET_TICKTIME_S} + 2 x heartbeat "
        f"{HEARTBEAT_S} + back-off {BACKOFF_S}" + (f" + Ra election {RA_ELECTION_S}" if cut == "leader" else "")
    )
    assert recovery_s <= bound_s, traffic.failures[:3]
    wait_for(lambda: queue_messages(majority, queue) == 0, 20, f"{queue} empty after healing")
    assert queue_messages(majority, f"{queue}.dlq") == 0
    for w in workers:
        assert w.proc.poll() is None, w.log()[-2000:]
