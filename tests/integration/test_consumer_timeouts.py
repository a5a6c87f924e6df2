"""A queue whose tasks may hold a message longer than the broker's consumer_timeout: its consumers ask
for a timeout of their own where the broker takes one (RabbitMQ 3.11.15+), and not on older brokers.

This machine's broker is 3.10.8: it stores a consumer argument it does not act on, so the 3.11.15+ case
runs against it with the version check answering yes; the 3.10.8 case is the real one.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiormq
import pytest

from rabbittask import App
from rabbittask.amqp.server import Server
from rabbittask.worker.child import Child
from rabbittask.worker.options import WorkerOptions
from rabbittask.worker.timeouts import consumer_timeouts


@pytest.mark.parametrize("takes_own_timeout", [True, False], ids=["3.11.15+", "this broker"])
def test_a_long_tasks_queue_is_consumed_with_a_timeout_of_its_own_where_the_broker_takes_one(
    broker_url: str, unique_name: str, monkeypatch: pytest.MonkeyPatch, takes_own_timeout: bool
) -> None:
    # Given a task allowed to run an hour, on a broker whose consumer_timeout is 30 min
    app = App("reports", broker_url=broker_url, exchange=f"{unique_name}.x", events=False, control=False)
    app.task(queue=unique_name, name="reports.build", time_limit=3600)(lambda: None)
    timeouts = consumer_timeouts(app, [unique_name], WorkerOptions(prefetch=1))
    assert timeouts == {unique_name: 4500.0}
    if takes_own_timeout:
        monkeypatch.setattr(Server, "consumer_timeout_per_consumer", property(lambda self: True))
    consumed: list[tuple[str, Any]] = []
    real_consume = aiormq.Channel.basic_consume

    async def basic_consume(channel: aiormq.Channel, queue: str, *args: Any, **kwargs: Any) -> Any:
        ok = await real_consume(channel, queue, *args, **kwargs)
        if queue == unique_name:  # not the child's chord joiner
            consumed.append((queue, kwargs.get("arguments")))
            child.lifecycle.signal()  # consuming: that is all this test needs
        return ok

    monkeypatch.setattr(aiormq.Channel, "basic_consume", basic_consume)
    child = Child(app, [unique_name], prefetch=1, consumer_timeouts=timeouts)
    # When its child starts consuming
    assert asyncio.run(asyncio.wait_for(child.run(), 30)) == 0
    app.close()
    # Then its consumer asked for 75 min of its own, or nothing where the broker cannot take it
    wanted = {"x-consumer-timeout": 4_500_000} if takes_own_timeout else None
    assert consumed == [(unique_name, wanted)]
