"""Fuzzed messages through a real worker on the real broker settle as the worker's stages said they would.

Hypothesis draws batches of messages (any body, any properties and headers; harness/strategies.py).
Each message is judged first by the in-memory stages (the oracle, `Judge`), then published with
aiormq (pamqp's codec, as any client) to a queue a real `rabbittask worker -c 1` consumes, followed by
a good message. The worker must settle every one as the oracle did: run (in its ledger, once),
dead-lettered with the same `rt-reason`, or parked for a due time ahead — and the good message runs.
The child never dies (its pid stays the same).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiormq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp.commands import Basic

from rabbittask.message import H_REASON
from rabbittask.testing.stub import on_the_wire
from tests import amqp
from tests.fuzz.harness import GOOD_BODY, Judge
from tests.fuzz.strategies import bodies, properties
from tests.waiting import wait_until

APP = "tests.apps.fuzz_app:app"
# Fewer than the in-memory fuzz: each batch waits on a real worker (`make fuzz` sets FUZZ_WORKER_BATCHES).
BATCHES = int(os.environ.get("FUZZ_WORKER_BATCHES", "15"))
# The smoke in `make test` runs the same cases every time; `make fuzz` draws new ones. (One full run's smoke
# stopped publishing after its first batch, in the test process, and went on past its timeout: not understood.)
FIXED_CASES = "FUZZ_WORKER_BATCHES" not in os.environ


@pytest.fixture(scope="module")
def exchange(broker_url: str) -> Iterator[str]:
    name = f"rt-fuzz-{uuid.uuid4().hex[:8]}"
    yield name
    amqp.delete_ladder(broker_url, name)


def ledger(tmp_path: Path, prefix: str) -> list[str]:
    path = tmp_path / prefix
    return [line.split()[1] for line in path.read_text().splitlines()] if path.exists() else []


class Publisher:
    """One aiormq connection with confirms, on a loop of its own (hypothesis calls the test synchronously)."""

    def __init__(self, url: str, exchange: str, queue: str) -> None:
        self.runner = asyncio.Runner()
        self.exchange, self.queue, self.url = exchange, queue, url
        self.channel: Any = self.runner.run(self._open())

    async def _open(self) -> Any:
        self.connection = await aiormq.connect(self.url)
        return await self.connection.channel()

    def publish(self, body: bytes, props: Basic.Properties) -> None:
        self.runner.run(
            self.channel.basic_publish(
                body, exchange=self.exchange, routing_key=self.queue, properties=props, mandatory=True
            )
        )

    def close(self) -> None:
        self.runner.run(self.connection.close())
        self.runner.close()


def test_fuzzed_messages_through_a_real_worker_settle_as_the_stages_said(
    worker_factory: Any, unique_name: str, amqp_cleanup: Any, exchange: str, broker_url: str, tmp_path: Path
) -> None:
    prefix = unique_name
    amqp_cleanup.queue(prefix)
    amqp_cleanup.queue(f"{prefix}.dlq")
    worker = worker_factory(APP, "-c", "1", prefix=prefix, env={"RT_TEST_EXCHANGE": exchange})
    worker.wait_for_log("consuming from")
    (child,) = worker.wait_for_children(1)
    judge = Judge()
    publisher = Publisher(broker_url, exchange, prefix)
    dead: dict[str, str] = {}  # id -> rt-reason, from the DLQ (taken out as they come)
    counter = iter(range(10**9))

    def take_dead() -> None:
        for props, _ in amqp.get_all(broker_url, f"{prefix}.dlq"):
            dead[props.message_id] = (props.headers or {}).get(H_REASON, "")

    @settings(
        max_examples=BATCHES,
        derandomize=FIXED_CASES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.lists(st.tuples(bodies, properties()), min_size=1, max_size=8))
    def batch(cases: list[tuple[bytes, Basic.Properties]]) -> None:
        expected: dict[str, tuple[str, str | None]] = {}
        for body, props in cases:
            props.message_id = f"case-{next(counter)}"  # ids of their own: the verdicts are checked by id
            try:
                on_the_wire(props, len(body))
            except (TypeError, ValueError, OverflowError, UnicodeEncodeError):
                continue  # AMQP cannot carry it
            verdict = judge.check(body, props)
            kind = "ran" if verdict.ran else "parked" if verdict.scheduled else "dead"
            expected[props.message_id] = (kind, verdict.dead_reason)
            publisher.publish(body, props)
        good = f"good-{next(counter)}"
        publisher.publish(GOOD_BODY, Basic.Properties(content_type="application/json", message_id=good,
                                                       message_type="fuzz.sync", delivery_mode=2))  # fmt: skip
        wait_until(lambda: good in ledger(tmp_path, prefix), 30, f"the good message {good} did not run")

        def all_settled() -> bool:
            take_dead()
            ran = ledger(tmp_path, prefix)
            return all(
                (mid in ran) if kind == "ran" else (mid in dead) if kind == "dead" else True
                for mid, (kind, _) in expected.items()
            )

        wait_until(all_settled, 30, lambda: f"not every message settled: {expected}, dead {dead}")
        ran = ledger(tmp_path, prefix)
        for mid, (kind, reason) in expected.items():
            assert ran.count(mid) == (1 if kind == "ran" else 0), (mid, kind, ran.count(mid))
            assert dead.get(mid) == (reason if kind == "dead" else None), (mid, kind, dead.get(mid), reason)

    try:
        batch()
    finally:
        publisher.close()
        judge.close()
    assert worker.children() == [child], "the child died or was replaced during the fuzz"
    assert amqp.depth(broker_url, prefix) == 0
