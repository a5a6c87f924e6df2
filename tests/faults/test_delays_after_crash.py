"""How late delayed messages run after the broker lost part of their route, and after a crash.

A quorum ladder level dead-letters at least once: RabbitMQ's dead-letter worker of the level holds an
expired message until its next hop confirms it. When the next hop cannot take it (its exchange is
missing, or no queue is bound yet while the node recovers), the worker tries again only when its
timer fires: `dead_letter_worker_publisher_confirm_timeout`, 180 s by default (advanced.config). That is
the 3-minute stall a broker crash can cause; docs/operations.md recommends a shorter timer, and these
scenarios measure what is left with it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from rabbittask import App
from rabbittask.delays import delay_exchange_name
from rabbittask.testing import RabbitNode
from tests.amqp import depth
from tests.apps.retries_app import make_app
from tests.faults.ledger import report_line
from tests.retries import APP, runs, wait_runs
from tests.waiting import assert_stays, wait_until

pytestmark = pytest.mark.faults

DLX_TIMEOUT_MS = 5000  # what these nodes run with; docs/operations.md suggests 5-15 s in production
ADVANCED = f"[{{rabbit, [{{dead_letter_worker_publisher_confirm_timeout, {DLX_TIMEOUT_MS}}}]}}]."


@pytest.fixture
def node() -> Iterator[RabbitNode]:
    with RabbitNode(advanced_config=ADVANCED) as node:
        yield node


def test_a_level_whose_next_hop_was_missing_forwards_its_messages_within_the_dead_letter_timer(
    node: RabbitNode,
) -> None:
    # Given delayed messages whose last hop (the ladder's due exchange) is missing when they expire
    app = App("dlx-timer", broker_url=node.url, exchange="dlx-timer")

    @app.task(name="dlx.record", queue="dlx-timer.q")
    def record(tag: str) -> None: ...

    app.declare()
    connection = pika.BlockingConnection(pika.URLParameters(node.url))
    connection.channel().exchange_delete(delay_exchange_name("dlx-timer"))
    connection.close()
    for i in range(20):
        record.apply_async((str(i),), countdown=1)
    app.close()
    wait_until(lambda: "Cannot forward any dead-letter messages" in node.log_tail(200), 15, "the broker held them")
    # When the topology is declared again (as a worker does when it reconnects)
    again = App("dlx-timer", broker_url=node.url, exchange="dlx-timer")
    again.task(name="dlx.record", queue="dlx-timer.q")(lambda tag: None)
    again.declare()
    again.close()
    back = time.monotonic()
    # Then every message reaches its queue by the next tick of the dead-letter timer, not 3 minutes later
    wait_until(lambda: depth(node.url, "dlx-timer.q") == 20, DLX_TIMEOUT_MS / 1000 + 10, "all 20 forwarded")
    held_s = time.monotonic() - back
    report_line(
        f"[ledger] ladder hop missing, then declared again: 20 of 20 forwarded {held_s:.1f} s later "
        f"(dead_letter_worker_publisher_confirm_timeout {DLX_TIMEOUT_MS} ms; 180 s with RabbitMQ's default)"
    )
    assert held_s <= DLX_TIMEOUT_MS / 1000 + 5


def test_delays_pending_at_a_broker_crash_run_once_never_early_and_late_by_at_most_the_restart(
    node: RabbitNode,
    worker_factory,
    tmp_path: Path,
) -> None:
    # Given 600 delayed tasks due over the next 20 s, spread over every level the delays use
    prefix, exchange, count = "rt-crash-delays", "rt-crash-delays-x", 600
    app = make_app(prefix, exchange, node.url)
    task = app.tasks["retries.record"]
    sent = time.time()
    with app.batch():
        for i in range(count):
            countdown = 0.2 + (i % 200) * 0.1
            task.apply_async((f"{i}@{sent + countdown:.3f}",), countdown=countdown)
    app.close()
    # When the node is killed while they wait in the ladder, and comes back
    time.sleep(2)
    node.kill()
    node.start()
    restarted = time.time()
    w = worker_factory(APP, prefix=prefix, broker_url=node.url, env={"RT_TEST_EXCHANGE": exchange})
    w.wait_for_log("consuming from")
    # Then each runs once, none before it was due, late by what the restart took and little more
    done = wait_runs(tmp_path, prefix, "record", count, timeout_s=60 + DLX_TIMEOUT_MS / 1000)
    due = {tag: float(tag.split("@")[1]) for tag, _, _ in done}
    early = [tag for tag, _, t in done if t < due[tag]]
    lateness = sorted(t - max(due[tag], restarted) for tag, _, t in done)
    assert_stays(lambda: len(runs(tmp_path, prefix, "record")) == count, 1.0, "no task runs twice")
    report_line(
        f"[ledger] broker kill -9 with {count} delays pending: ran={len(done)} once each, early={len(early)}, "
        f"lateness after max(due, restart) p50 {lateness[len(lateness) // 2]:.2f} s, "
        f"p99 {lateness[int(len(lateness) * 0.99) - 1]:.2f} s, max {lateness[-1]:.2f} s "
        f"(restart took {node.start_duration_s:.1f} s)"
    )
    assert early == []
    assert len({tag for tag, _, _ in done}) == count
    assert lateness[-1] <= DLX_TIMEOUT_MS / 1000 + 10
