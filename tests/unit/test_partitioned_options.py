"""Partitioned queues without a broker: options and their errors, the key header, the topology, home partitions."""

from __future__ import annotations

from typing import Any

import pytest

from rabbittask import App, ConfigError
from rabbittask.history.argsrepr import H_ARGSREPR
from rabbittask.message import H_PARTITION_KEY, Outgoing
from rabbittask.partitions import home_partitions, partition_key_text
from rabbittask.topology import definitions


def orders_app(**options: Any) -> App:
    app = App("shop")

    @app.task(queue="orders", name="apply", **options)
    def apply(customer_id: int, event: dict[str, Any], *, note: str = "") -> None: ...

    return app


def test_a_call_carries_its_key_argument_in_the_partition_header() -> None:
    app = orders_app(partition_by="customer_id", partitions=8)
    task = app.tasks["apply"]

    def headers(msg: Outgoing) -> dict[str, object]:
        return {k: v for k, v in (msg.headers or {}).items() if k != H_ARGSREPR}  # the history's copy aside

    assert headers(task.message((42, {}))) == {H_PARTITION_KEY: "42"}
    assert headers(task.message(kwargs={"customer_id": 42, "event": {}})) == {H_PARTITION_KEY: "42"}
    # Given headers are kept beside it
    assert headers(task.message((7, {}), headers={"x": 1})) == {"x": 1, H_PARTITION_KEY: "7"}


def test_key_text_is_the_string_itself_or_json() -> None:
    assert partition_key_text("acme") == "acme"
    assert partition_key_text(42) == "42"
    assert partition_key_text(["a", 1]) == '["a",1]'
    assert partition_key_text(None) == "null"


def test_a_keyword_only_key_with_a_default_is_read() -> None:
    app = orders_app(partition_by="note", partitions=2)
    assert (app.tasks["apply"].message((1, {})).headers or {})[H_PARTITION_KEY] == ""
    assert (app.tasks["apply"].message((1, {}), {"note": "n"}).headers or {})[H_PARTITION_KEY] == "n"


def test_the_topology_is_a_hash_exchange_over_single_active_consumer_quorum_partitions() -> None:
    d = definitions(orders_app(partition_by="customer_id", partitions=3).declarations())
    exchanges = {e["name"]: e for e in d["exchanges"]}
    assert exchanges["rabbittask.orders.hash"]["type"] == "x-consistent-hash"
    assert exchanges["rabbittask.orders.hash"]["arguments"] == {"hash-header": H_PARTITION_KEY}
    queues = {q["name"]: q["arguments"] for q in d["queues"] if q["name"].startswith("orders")}
    assert sorted(queues) == ["orders.dlq", "orders.p0", "orders.p1", "orders.p2"]
    for i in range(3):
        args = queues[f"orders.p{i}"]
        assert args["x-queue-type"] == "quorum"
        assert args["x-single-active-consumer"] is True
        assert args["x-dead-letter-routing-key"] == "orders"  # one orders.dlq for every partition
    bindings = {(b["source"], b["destination"], b["routing_key"]) for b in d["bindings"]}
    assert ("rabbittask", "rabbittask.orders.hash", "orders") in bindings
    assert ("rabbittask.delay", "rabbittask.orders.hash", "*." * 26 + "orders") in bindings
    assert {("rabbittask.orders.hash", f"orders.p{i}", "1") for i in range(3)} <= bindings
    assert ("rabbittask.dlx", "orders.dlq", "orders") in bindings
    assert not any(b[1] == "orders" for b in bindings)  # no plain queue of the name


def test_a_fair_queue_has_no_single_active_consumer() -> None:
    d = definitions(orders_app(fair_by="customer_id", partitions=2).declarations())
    queues = {q["name"]: q["arguments"] for q in d["queues"]}
    assert "x-single-active-consumer" not in queues["orders.p0"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"partition_by": "customer_id"}, "task 'apply': partition_by='customer_id' needs partitions=N"),
        ({"partitions": 4}, "task 'apply': partitions=4 needs partition_by='<argument>'"),
        ({"partition_by": "customer", "partitions": 4}, "partition_by='customer' names no parameter of the task; "),
        ({"partition_by": "customer_id", "fair_by": "customer_id", "partitions": 4}, "not both"),
        ({"partition_by": "customer_id", "partitions": 0}, "needs partitions=N"),
        ({"partition_by": "customer_id", "partitions": 5000}, "partitions must be 1..1024, got 5000"),
        ({"partition_by": "customer_id", "partitions": 2, "queue_type": "classic"}, "partitioned queues are quorum"),
        ({"partition_by": "customer_id", "partitions": 2, "max_length": 10}, "not supported on a partitioned"),
        ({"partition_by": "customer_id", "partitions": 2, "max_priority": 5}, "would reorder a key's messages"),
        ({"fair_by": "customer_id", "partitions": 2, "single_active_consumer": True}, "use partition_by"),
        ({"partition_by": "customer_id", "partitions": 2, "partition_retry": "later"}, "partition_retry"),
    ],
)
def test_options_that_cannot_work_are_refused_saying_what_to_do(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        orders_app(**options)
    assert message in str(e.value)


def test_a_task_without_a_key_on_a_partitioned_queue_is_refused() -> None:
    app = orders_app(partition_by="customer_id", partitions=2)
    with pytest.raises(ConfigError, match="queue 'orders' is partitioned by another task; .* partitions=2 too"):

        @app.task(queue="orders", name="plain")
        def plain(x: int) -> None: ...


def test_two_tasks_on_one_partitioned_queue_must_agree_on_the_count() -> None:
    app = orders_app(partition_by="customer_id", partitions=2)

    @app.task(queue="orders", name="same", partition_by="c", partitions=2)
    def same(c: int) -> None: ...

    with pytest.raises(ConfigError, match="declared with different options"):

        @app.task(queue="orders", name="other", partition_by="c", partitions=3)
        def other(c: int) -> None: ...


def test_each_child_takes_every_nth_partition_first_and_the_rest_as_standby() -> None:
    queues = [f"q.p{i}" for i in range(8)]
    assert home_partitions(queues, (0, 2)) == (queues[0::2], queues[1::2])
    assert home_partitions(queues, (1, 2))[0] == queues[1::2]
    assert home_partitions(queues, (0, 1)) == (queues, [])
    assert home_partitions(queues[:2], (3, 4)) == ([], queues[:2])  # more children than partitions: standby only


def test_the_stub_broker_routes_one_key_to_one_partition_and_runs_them_in_order() -> None:
    from rabbittask.testing import StubBroker

    app = App("stub-partitions")
    ran: list[tuple[str, int]] = []

    @app.task(queue="orders", name="apply", partition_by="key", partitions=4)
    def apply(key: str, seq: int) -> None:
        ran.append((key, seq))

    stub = StubBroker(app)
    with stub:
        for seq in range(5):
            for key in ("a", "b", "c"):
                apply.delay(key, seq)
        # Each key's five tasks wait in one partition; the queue's name shows them all
        assert len(stub.queue("orders")) == 15
        by_partition = [{m.args[0] for m in stub.queue(f"orders.p{i}")} for i in range(4)]
        assert sorted(k for keys in by_partition for k in keys) == ["a", "b", "c"]
        stub.run_until_idle()
    assert len(ran) == 15
    assert all([s for k, s in ran if k == key] == list(range(5)) for key in "abc")
    with app.eager():
        assert apply.delay("a", 9).get() is None


def test_an_in_place_retry_wait_beyond_the_consumer_timeout_is_reported_at_start_up() -> None:
    from rabbittask.worker.options import WorkerOptions
    from rabbittask.worker.timeouts import consumer_timeout_problems

    app = orders_app(partition_by="customer_id", partitions=2, retry_backoff_max=3600.0)
    (problem,) = consumer_timeout_problems(app, ["orders"], WorkerOptions())
    assert "task 'apply': its retries wait in place (partition_by) up to 3600 s" in problem
    assert "lower retry_backoff_max, use partition_retry='skip'" in problem
    # The default back-off cap (600 s) fits in the default consumer_timeout (1800 s), and "skip" never waits
    assert (
        consumer_timeout_problems(orders_app(partition_by="customer_id", partitions=2), ["orders"], WorkerOptions())
        == []
    )
    skip = orders_app(partition_by="customer_id", partitions=2, retry_backoff_max=3600.0, partition_retry="skip")
    assert consumer_timeout_problems(skip, ["orders"], WorkerOptions()) == []
