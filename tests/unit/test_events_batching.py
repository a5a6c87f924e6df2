"""Task events without a broker: states, grouping by routing key, batching, and failures that never reach a task."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest

from rabbittask.ops.heartbeat import Heartbeat
from rabbittask.ops.status import workers_of
from rabbittask.settings import Settings
from rabbittask.worker import events as ev
from rabbittask.worker.outcome import Outcome, Reason, Republish


def delivered(mid: str = "m1", task: str = "t.add", headers: dict[str, Any] | None = None) -> Any:
    props = SimpleNamespace(message_id=mid, message_type=task, headers=headers)
    return SimpleNamespace(header=SimpleNamespace(properties=props))


def outcome(task: str = "t.add", reason: Reason | None = None, republish: bool = False, mid: str = "m1") -> Outcome:
    return Outcome(
        delivered(mid, task),
        task,
        reason=reason,
        exc_type="ValueError" if reason else "",
        exc_message="bad value" if reason else "",
        traceback="Traceback (most recent call last):\n" + "  frame\n" * 1000 + "ValueError: bad value\n"
        if reason
        else "",
        runtime_s=0.5,
        republish=Republish(delay_s=1.0, headers={}) if republish else None,
    )


def test_each_settled_task_maps_to_one_state_and_a_wait_is_no_event() -> None:
    assert ev.state_of(outcome()) == "succeeded"
    assert ev.state_of(outcome(reason=Reason.REJECTED)) == "failed"
    assert ev.state_of(outcome(reason=Reason.FAILED)) == "failed"
    assert ev.state_of(outcome(reason=Reason.INVALID)) == "dead-lettered"  # never ran
    assert ev.state_of(outcome(reason=Reason.RETRY, republish=True)) == "retried"
    assert ev.state_of(outcome(reason=Reason.NOT_DUE, republish=True)) is None


def test_events_are_grouped_by_routing_key_and_a_failure_carries_its_traceback() -> None:
    groups = ev.task_events([outcome(mid="a"), outcome(mid="b"), outcome("t.x", Reason.FAILED, mid="c")])
    assert sorted(groups) == ["task.dead-lettered.t.x", "task.failed.t.x", "task.succeeded.t.add"]
    assert [e["id"] for e in groups["task.succeeded.t.add"]] == ["a", "b"]
    [failed] = groups["task.failed.t.x"]
    traceback = failed.pop("traceback")
    assert failed == {
        "id": "c",
        "task": "t.x",
        "state": "failed",
        "runtime_s": 0.5,
        "reason": Reason.FAILED,
        "exc_type": "ValueError",
        "exc_message": "bad value",
    }
    # the end of a long traceback, where it raised
    assert len(traceback) == ev.EVENT_TRACEBACK_CHARS and traceback.endswith("ValueError: bad value\n")
    # a failed task ends in the DLQ too: a dead-lettered event without the traceback
    assert groups["task.dead-lettered.t.x"] == [{**failed, "state": "dead-lettered"}]


def test_a_retry_says_when_it_is_due() -> None:
    [retried] = ev.task_events([outcome("t.x", Reason.RETRY, republish=True)])["task.retried.t.x"]
    assert (retried["state"], retried["retry_in_s"], retried["exc_type"]) == ("retried", 1.0, "ValueError")
    assert "traceback" not in retried


def test_a_message_that_never_ran_is_only_dead_lettered() -> None:
    groups = ev.task_events([outcome("t.x", Reason.INVALID, mid="c")])
    assert list(groups) == ["task.dead-lettered.t.x"]
    assert groups["task.dead-lettered.t.x"][0]["reason"] == Reason.INVALID


class FakeChannel:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.fail = fail
        self.is_closed = False

    async def exchange_declare(self, *args: Any, **kwargs: Any) -> None:
        pass

    async def queue_declare(self, *args: Any, **kwargs: Any) -> None:  # the history stream
        pass

    async def queue_bind(self, *args: Any, **kwargs: Any) -> None:
        pass

    async def close(self) -> None:
        pass

    async def basic_publish(self, body: bytes, *, exchange: str, routing_key: str, properties: Any) -> None:
        if self.fail:
            raise ConnectionError("gone")
        assert exchange == "rabbittask.events"
        self.sent.append((routing_key, json.loads(body)))


class FakePublisher:
    def __init__(self, channel: FakeChannel) -> None:
        self.channel = channel

    async def side_channel(self) -> FakeChannel:
        return self.channel


def events(channel: FakeChannel, settings: Settings | None = None) -> ev.Events:
    stats = {"done": 0, "in_flight": 0, "consuming": True, "reconnects": 0}
    return ev.Events(settings or Settings(), FakePublisher(channel), "app", ["q"], lambda: stats)  # type: ignore[arg-type]


def test_received_and_started_events_are_off_by_default_and_batched_when_on() -> None:
    assert (events(FakeChannel()).received, events(FakeChannel()).started) == (None, None)

    async def main() -> tuple[FakeChannel, ev.Events]:
        channel = FakeChannel()
        e = events(channel, Settings(events_received=True, events_started=True))
        assert e.received is not None and e.started is not None
        for i in range(3):  # what the child appends: one (message, time) tuple per task and event
            e.received.append((delivered(str(i)), 100.0 + i))
        e.started.append((delivered("0"), 101.5))
        e.record(outcome(mid="0"))
        e.flush()
        await asyncio.sleep(0.01)
        return channel, e

    channel, e = asyncio.run(main())
    sent = dict(channel.sent)
    assert sorted(sent) == ["task.received.t.add", "task.started.t.add", "task.succeeded.t.add"]
    assert sent["task.received.t.add"]["events"] == [
        {"id": str(i), "task": "t.add", "state": "received", "ts": 100.0 + i} for i in range(3)
    ]
    assert sent["task.started.t.add"]["events"] == [{"id": "0", "task": "t.add", "state": "started", "ts": 101.5}]
    assert not e.received and not e.started


def test_a_full_batch_goes_out_as_one_message_per_routing_key() -> None:
    async def main() -> FakeChannel:
        channel = FakeChannel()
        e = events(channel)
        for i in range(ev.BATCH):
            e.record(outcome(mid=str(i)))
        assert e.buffer == []  # flushed at the batch size, without waiting for the timer
        await asyncio.sleep(0.01)
        return channel

    channel = asyncio.run(main())
    [(key, body)] = channel.sent
    assert key == "task.succeeded.t.add" and len(body["events"]) == ev.BATCH


def test_a_broken_channel_drops_events_and_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> ev.Events:
        e = events(FakeChannel(fail=True))
        e.record(outcome(reason=Reason.REJECTED))
        e.flush()
        await asyncio.sleep(0.01)
        e.record(outcome())  # within the back-off: kept, not sent
        e.flush()
        await e.close()
        return e

    e = asyncio.run(main())
    assert e.dropped == 2 and e.failed == 1 and len(e.succeeded) == 1  # its failed and dead-lettered events


def test_a_stuck_send_keeps_at_most_max_pending_events(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> ev.Events:
        e = events(FakeChannel())
        e._sending = asyncio.get_running_loop().create_future()  # type: ignore[assignment]
        for i in range(ev.MAX_PENDING + 7):
            e.buffer.append(outcome(mid=str(i)))
        e.flush()
        return e

    e = asyncio.run(main())
    assert len(e.buffer) == ev.MAX_PENDING and e.dropped == 7


def test_status_sums_the_heartbeats_of_a_workers_children() -> None:
    beat = {"host": "h", "ppid": 10, "queues": ["q"], "done": 5, "failed": 1, "uptime_s": 3.0, "consuming": True}
    beat |= {"dead_lettered": 2, "reconnects": 1}
    children = [{**beat, "pid": 11}, {**beat, "pid": 12, "done": 7, "uptime_s": 4.0}]
    [worker] = workers_of([Heartbeat.decode(json.dumps(child)) for child in children])
    assert (worker["pid"], worker["children"], worker["child_pids"]) == (10, 2, [11, 12])
    assert (worker["done"], worker["failed"], worker["uptime_s"], worker["consuming"]) == (12, 2, 4.0, True)
    assert (worker["dead_lettered"], worker["reconnects"]) == (4, 2)


def test_events_can_be_turned_off_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RABBITTASK_EVENTS", "false")
    assert Settings().events is False


def test_events_carry_the_arguments_the_producer_wrote_for_the_history() -> None:
    # Given a message whose producer wrote its arguments (masked) in rt-argsrepr, and one without
    with_args = Outcome(delivered("a", headers={"rt-argsrepr": "(1, password='***')"}), "t.add", runtime_s=0.1)
    e = ev.Events(Settings(), None, "app", ["q"], lambda: {}, publish=False)  # type: ignore[arg-type]
    e.record(with_args)
    e.record(outcome(mid="b"))
    # Then the succeeded events carry them as they came, and nothing when there were none
    events = ev.succeeded_events(e.succeeded)["task.succeeded.t.add"]
    assert [ev_.get("args") for ev_ in events] == ["(1, password='***')", None]
