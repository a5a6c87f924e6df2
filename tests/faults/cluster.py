"""Helpers of the cluster scenarios: node URL lists, the ledger app, publishing traffic, queue members."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from rabbittask import App, PublishError
from rabbittask.testing import RabbitNode
from tests.faults import helpers
from tests.faults.ledger import Ledger, Report


def urls(nodes: list[RabbitNode]) -> str:
    return ",".join(n.url for n in nodes)


def ledger_app(url: str, prefix: str) -> App:
    """The ledger app with `ledger.work` only, and timeouts for fail-over: 5 s to confirm, 2 s to connect."""
    app = App("ledger", broker_url=url, heartbeat_s=2, publish_timeout_s=5, connect_timeout_s=2)

    @app.task(queue=f"{prefix}.work", name="ledger.work")
    def work(key: str, sleep_s: float = 0.0) -> str: ...

    return app


@dataclass
class Traffic:
    """Sequential confirmed `.delay()` calls in a thread, with the time of each confirm and failure."""

    app: App
    ledger: Ledger
    confirms: list[float] = field(default_factory=list)
    failures: list[tuple[float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    n: int = 0

    def run(self) -> None:
        try:
            self._publish_until_stopped()
        finally:
            self.app.close()  # this thread's publisher connection (pika connections belong to one thread)

    def _publish_until_stopped(self) -> None:
        work = self.app.tasks["ledger.work"]
        while not self.stop.is_set():
            key = f"t{self.n}"
            self.n += 1
            try:
                work.apply_async((key,), message_id=key)
            except PublishError as e:
                self.ledger.failed.add(key)
                self.failures.append((time.monotonic(), str(e)))
                time.sleep(0.2)
            else:
                self.ledger.confirmed.add(key)
                self.confirms.append(time.monotonic())
                time.sleep(0.005)

    def __enter__(self) -> Traffic:
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(30)
        self.app.close()

    def longest_stall_s(self, after: float, until: float) -> float:
        """The longest time between two confirms (or `until`) from shortly before `after`."""
        times = [t for t in self.confirms if after - 5 <= t <= until] + [until]
        return max((b - a for a, b in zip(times, times[1:], strict=False)), default=float("inf"))


def queue_info(node: RabbitNode, queue: str) -> dict[str, str]:
    out = node.ctl("list_queues", "-q", "--no-table-headers", "name", "leader", "members", "online")
    for line in out.splitlines():
        parts = line.split("\t")
        if parts and parts[0] == queue:
            return {"leader": parts[1], "members": parts[2], "online": parts[3]}
    raise AssertionError(f"queue {queue} not found:\n{out}")


def finish(ledger: Ledger, scenario: str, reports: list[Report], fault_end: float, timeout_s: float = 60) -> Report:
    """`helpers.finish` without asserting that every duplicate is explained: these scenarios check losses only."""
    return helpers.finish(ledger, scenario, reports, fault_end, timeout_s, require_explained=False)


def form_cluster(nodes: list[RabbitNode]) -> None:
    """Start the nodes (in parallel) and join the others to the first; returns when all are online."""
    errors: list[BaseException] = []

    def start(node: RabbitNode) -> None:
        try:
            node.start()
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=start, args=(node,)) for node in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    for node in nodes[1:]:
        node.ctl("stop_app")
        node.ctl("join_cluster", nodes[0].nodename)
        node.ctl("start_app")
    nodes[0].ctl("await_online_nodes", str(len(nodes)), "--timeout", "60")
