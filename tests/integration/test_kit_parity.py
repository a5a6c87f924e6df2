"""Eager mode, the stub broker and a real worker give the same outcome, case by case.

Each case builds its message with the app (as `.call()` would), sends it over direct reply-to in
each mode, and records the outcome (result value, or the remote error's type and reason) and the
reasons of what reached the dead-letter queue. The real worker is the plugin's `rabbittask_worker`
on the plugin's broker (tests/conftest.py's `broker_url` is the same one).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from rabbittask import App, ArgumentsInvalid, TaskError
from rabbittask.message import Outgoing, encode_body, new_id
from rabbittask.testing import StubBroker
from rabbittask.topology import dlq_name
from tests import amqp
from tests.apps.kit_app import make_app
from tests.waiting import wait_until

Build = Callable[[App, str], Outgoing]
Seen = tuple[tuple[Any, ...], list[str]]  # (outcome, reasons in the dead-letter queue)


def raw(task: str, *args: Any) -> Build:
    """A message another producer might send: the caller's argument check is skipped."""
    return lambda app, prefix: Outgoing(f"{prefix}.main", encode_body(list(args), {}), new_id(), task)


def call(task: str, *args: Any, **options: Any) -> Build:
    return lambda app, prefix: app.tasks[task].message(args, **options)


CASES: dict[str, tuple[Build, tuple[Any, ...]]] = {
    "success": (call("kit.add", 2, 3), ("SUCCESS", 5)),
    "raise": (call("kit.boom", "x"), ("FAILURE", "ValueError", "task raised")),
    "autoretry then success": (call("kit.flaky", 2), ("SUCCESS", 3)),
    "retries exhausted": (call("kit.flaky", 9), ("FAILURE", "Flaky", "max retries exceeded")),
    "expired": (
        call("kit.add", 1, 2, expires=datetime.now(UTC) - timedelta(seconds=1)),
        ("FAILURE", "Error", "expired"),
    ),
    "invalid arguments (worker)": (raw("kit.add", "x", 1), ("FAILURE", "ArgumentsInvalid", "invalid arguments")),
    "invalid arguments (caller)": (call("kit.add", 1, "two"), ("REFUSED", "ArgumentsInvalid")),
    "result JSON cannot carry": (call("kit.weird"), ("FAILURE", "TypeError", "result not JSON-serialisable")),
}


def outcome(app: App, prefix: str, build: Build) -> tuple[Any, ...]:
    try:
        msg = build(app, prefix)
    except ArgumentsInvalid as e:
        return ("REFUSED", type(e).__name__)
    try:
        return ("SUCCESS", app.rpc_call(msg, 20.0))
    except TaskError as e:
        return ("FAILURE", e.type_name, e.reason)


def in_memory(app: App, prefix: str, build: Build, eager: bool) -> Seen:
    with app.eager() if eager else StubBroker(app) as stub:
        got = outcome(app, prefix, build)
        return got, [str(m.reason) for m in stub.dead_letters(f"{prefix}.main")]


def on_a_real_worker(app: App, prefix: str, build: Build, url: str, expected_dead: int) -> Seen:
    got = outcome(app, prefix, build)
    dlq = dlq_name(f"{prefix}.main")
    # The reply goes out before the dead letter is confirmed: wait for as many as the other modes saw.
    wait_until(lambda: amqp.depth(url, dlq) >= expected_dead, 10.0, f"{expected_dead} dead letter(s) in {dlq}")
    return got, [str((props.headers or {}).get("rt-reason")) for props, _ in amqp.get_all(url, dlq)]


@pytest.fixture(scope="module")
def exchange(broker_url: str) -> Iterator[str]:
    name = f"rt-kit-{uuid.uuid4().hex[:8]}"
    yield name
    amqp.delete_ladder(broker_url, name)


@pytest.fixture
def prefix(unique_name: str, amqp_cleanup: Any) -> str:
    for q in ("main", "aio"):
        amqp_cleanup.queue(f"{unique_name}.{q}")
        amqp_cleanup.queue(f"{unique_name}.{q}.dlq")
    return unique_name


@pytest.mark.parametrize("case", list(CASES))
def test_eager_stub_and_a_real_worker_agree(
    case: str, prefix: str, exchange: str, broker_url: str, rabbittask_worker: Any
) -> None:
    build, expected = CASES[case]
    app = make_app(prefix, exchange, broker_url)
    try:
        eager = in_memory(app, prefix, build, eager=True)
        stub = in_memory(app, prefix, build, eager=False)
        rabbittask_worker("tests.apps.kit_app:app", env={"RT_TEST_PREFIX": prefix, "RT_TEST_EXCHANGE": exchange})
        real = on_a_real_worker(app, prefix, build, broker_url, len(eager[1]))
    finally:
        app.close()
    assert eager[0] == expected
    assert eager == stub == real
