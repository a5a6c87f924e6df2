"""The core path against a real broker: publish with confirms, run in a real worker, late ack, dead letters."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from rabbittask import (
    App,
    ArgumentsInvalid,
    BatchNotConfirmed,
    PublishConnectionError,
    PublishNotConfirmed,
    TopologyMismatch,
)
from tests import amqp
from tests.apps.core import make_app
from tests.waiting import assert_stays, wait_until

APP = "tests.apps.core:app"


@pytest.fixture
def prefix(unique_name: str, amqp_cleanup: object) -> str:
    cleanup = amqp_cleanup
    for q in ("main", "aio"):
        cleanup.queue(f"{unique_name}.{q}")  # type: ignore[attr-defined]
        cleanup.queue(f"{unique_name}.{q}.dlq")  # type: ignore[attr-defined]
    return unique_name


@pytest.fixture
def app(prefix: str, broker_url: str) -> Iterator[App]:
    app = make_app(prefix, broker_url)
    yield app
    app.close()


def ledger(tmp_path: Path, prefix: str) -> list[str]:
    path = tmp_path / prefix
    return path.read_text().splitlines() if path.exists() else []


def wait_ledger(tmp_path: Path, prefix: str, line: str, count: int = 1, timeout_s: float = 20.0) -> list[str]:
    def shown() -> list[str] | None:
        lines = ledger(tmp_path, prefix)
        return lines if sum(1 for x in lines if x.startswith(line)) >= count else None

    return wait_until(shown, timeout_s, lambda: f"ledger never showed {line!r} x{count}: {ledger(tmp_path, prefix)}")


def test_sync_and_async_tasks_run_in_a_real_worker(app: App, prefix: str, worker_factory) -> None:
    # Given a worker on both queues of the app
    w = worker_factory(APP, prefix=prefix)
    w.wait_for_log("consuming from")
    # When a sync and an async task are called (RPC) and sent (delay)
    assert app.tasks["core.add"].call(2, 3, timeout=10) == 5
    assert asyncio.run(app.tasks["core.amul"].acall(4, 5, timeout=10)) == 20
    handle = app.tasks["core.add"].delay(1, 1)
    # Then the handle names the task and its queue, and the queue drains
    assert handle.task_name == "core.add" and handle.queue == f"{prefix}.main" and len(handle.id) == 36
    amqp.wait_depth(app.settings.broker_url, f"{prefix}.main", 0)


def test_async_publishing_and_batches_are_confirmed(app: App, prefix: str, broker_url: str) -> None:
    add = app.tasks["core.add"]

    async def main() -> None:
        await add.adelay(1, 2)
        await add.aapply_async((3, 4), message_id="my-id-1")
        async with app.abatch():
            for i in range(300):
                await add.adelay(i, i)
        await app.aclose()

    asyncio.run(main())
    with app.batch():
        for i in range(200):
            add.delay(i, 1)
    amqp.wait_depth(broker_url, f"{prefix}.main", 502)
    messages = amqp.get_all(broker_url, f"{prefix}.main")
    props, body = messages[1]
    assert props.message_id == "my-id-1" and props.type == "core.add" and props.delivery_mode == 2
    assert json.loads(body) == {"v": 1, "args": [3, 4], "kwargs": {}}


def test_a_batch_names_the_messages_that_were_not_confirmed(app: App, prefix: str, broker_url: str) -> None:
    add = app.tasks["core.add"]
    with pytest.raises(BatchNotConfirmed) as info:
        with app.batch():
            add.delay(1, 1)
            add.apply_async((2, 2), queue=f"{prefix}.nowhere", message_id="lost-one")
    assert info.value.failed_ids == ["lost-one"]
    assert "lost-one" in str(info.value) and "no queue is bound" in str(info.value)
    amqp.wait_depth(broker_url, f"{prefix}.main", 1)


def test_a_batch_streams_while_its_block_runs_and_a_slow_block_is_not_taken_for_lost_confirms(
    prefix: str, broker_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an app whose publishes time out after 0.5 s
    monkeypatch.setenv("RABBITTASK_PUBLISH_TIMEOUT_S", "0.5")
    app = make_app(prefix, broker_url)
    assert app.settings.publish_timeout_s == 0.5
    add = app.tasks["core.add"]
    try:
        with app.batch():
            for i in range(600):
                add.delay(i, 1)
            # Then what the block sent is on the broker before the block ends (however long the broker
            # takes: the block waits here; a loaded CI machine once needed more than 5 s for 500)
            assert wait_depth_at_least(broker_url, f"{prefix}.main", 500, timeout_s=30) <= 600
            time.sleep(1.0)  # a caller slower than the publish timeout between two sends
            for i in range(100):
                add.delay(i, 2)
    finally:
        app.close()
    # And nothing was reported as not confirmed: the timeout counts only while the batch waits
    amqp.wait_depth(broker_url, f"{prefix}.main", 700)


def wait_depth_at_least(url: str, queue: str, least: int, timeout_s: float = 5.0) -> int:
    return wait_until(
        lambda: n if (n := amqp.depth(url, queue)) >= least else None,
        timeout_s,
        lambda: f"queue {queue} holds {amqp.depth(url, queue)} messages, expected at least {least}",
    )


def test_a_batch_whose_block_raises_confirms_what_it_sent_and_sends_no_more(
    app: App, prefix: str, broker_url: str
) -> None:
    add = app.tasks["core.add"]
    with pytest.raises(KeyError, match="the caller's own error"):
        with app.batch():
            for i in range(300):
                add.delay(i, 1)
            raise KeyError("the caller's own error")
    # The first chunk went out while the block ran; the messages still held when it raised did not
    queue = f"{prefix}.main"
    wait_until(lambda: amqp.depth(broker_url, queue) > 0, 5, "the first chunk on the broker")
    assert_stays(lambda: amqp.depth(broker_url, queue) < 300, 0.5, "the messages held when the block raised never sent")
    assert 0 < amqp.depth(broker_url, queue) < 300


def test_bad_arguments_raise_before_anything_is_sent(app: App, prefix: str, broker_url: str) -> None:
    add = app.tasks["core.add"]
    add.delay(1, 1)  # declares the topology
    with pytest.raises(ArgumentsInvalid) as info:
        add.delay("one", 2)  # type: ignore[arg-type]
    assert str(info.value) == (
        "invalid arguments for task 'core.add': x: Input should be a valid integer, "
        "unable to parse string as an integer (got 'one')"
    )
    with pytest.raises(ArgumentsInvalid, match="y: Missing required argument"):
        asyncio.run(add.adelay(1))  # type: ignore[call-arg]
    amqp.wait_depth(broker_url, f"{prefix}.main", 1)


def test_unroutable_publish_is_an_error_not_a_silent_drop(app: App, prefix: str) -> None:
    with pytest.raises(PublishNotConfirmed, match=f"no queue is bound to routing key '{prefix}.ghost'"):
        app.tasks["core.add"].apply_async((1, 2), queue=f"{prefix}.ghost")

    async def main() -> None:
        with pytest.raises(PublishNotConfirmed, match=f"no queue is bound to routing key '{prefix}.ghost'"):
            await app.tasks["core.add"].aapply_async((1, 2), queue=f"{prefix}.ghost")

    asyncio.run(main())


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_broker_fails_fast_naming_host_and_port_without_the_password() -> None:
    port = _closed_port()
    app = App("down", broker_url=f"amqp://alice:s3cret-pw@127.0.0.1:{port}/")

    @app.task(queue="q")
    def t() -> None: ...

    start = time.monotonic()
    with pytest.raises(PublishConnectionError) as info:
        t.delay()
    assert time.monotonic() - start < 5
    assert f"127.0.0.1:{port}" in str(info.value) and "s3cret-pw" not in str(info.value)
    with pytest.raises(PublishConnectionError) as ainfo:
        asyncio.run(t.adelay())
    assert f"127.0.0.1:{port}" in str(ainfo.value) and "s3cret-pw" not in str(ainfo.value)


def test_wrong_credentials_say_so(broker_url: str) -> None:
    host = broker_url.split("@", 1)[1]
    app = App("badlogin", broker_url=f"amqp://guest:wrong-pw-123@{host}")

    @app.task(queue="q")
    def t() -> None: ...

    with pytest.raises(PublishConnectionError, match="refused the login") as info:
        t.delay()
    assert "wrong-pw-123" not in str(info.value)
    with pytest.raises(PublishConnectionError, match="refused the login") as ainfo:
        asyncio.run(t.adelay())
    assert "wrong-pw-123" not in str(ainfo.value)


def test_a_queue_with_other_arguments_is_a_clear_mismatch(broker_url: str, unique_name: str, amqp_cleanup) -> None:
    queue = amqp_cleanup.queue(unique_name)
    amqp_cleanup.queue(f"{unique_name}.dlq")
    connection = amqp.connect(broker_url)
    connection.channel().queue_declare(queue, durable=True, arguments={"x-queue-type": "classic"})
    connection.close()
    app = App("mismatch", broker_url=broker_url)

    @app.task(queue=queue)
    def t() -> None: ...

    with pytest.raises(TopologyMismatch) as info:
        t.delay()
    text = str(info.value)
    # the broker names the first argument that differs: here the dead-letter exchange a classic queue lacks
    assert text.startswith(
        f"queue '{queue}' exists with other arguments: x-dead-letter-exchange is not set on the broker, "
        "the code declares 'rabbittask.dlx'. Fix one side: change the task's queue options to match"
    )
    assert f"rabbitmqctl delete_queue {queue}" in text


def test_failures_and_bad_messages_are_dead_lettered_with_the_reason(
    app: App, prefix: str, broker_url: str, worker_factory, tmp_path: Path
) -> None:
    w = worker_factory(APP, "-Q", f"{prefix}.main", prefix=prefix)
    w.wait_for_log("consuming from")
    q = f"{prefix}.main"
    app.tasks["core.boom"].delay("kaput")
    amqp.publish_raw(broker_url, q, b"{not json", content_type="application/json", type="core.add", message_id="m1")
    amqp.publish_raw(
        broker_url,
        q,
        b'{"v":1,"args":[],"kwargs":{}}',
        content_type="application/json",
        type="core.nope",
        message_id="m2",
    )
    amqp.publish_raw(
        broker_url,
        q,
        b'{"v":1,"args":["a"],"kwargs":{}}',
        content_type="application/json",
        type="core.add",
        message_id="m3",
    )
    amqp.publish_raw(
        broker_url,
        q,
        b"\x80\x04pickle",
        content_type="application/x-python-serialize",
        type="core.add",
        message_id="m4",
    )
    app.tasks["core.reject"].delay("not today")
    # the worker keeps consuming after all of them
    app.tasks["core.record"].delay("after")
    wait_ledger(tmp_path, prefix, "done after")
    amqp.wait_depth(broker_url, f"{q}.dlq", 6)
    dead = {p.message_id: p for p, _ in amqp.get_all(broker_url, f"{q}.dlq")}
    reasons = {mid: p.headers["rt-reason"] for mid, p in dead.items()}
    assert reasons["m1"] == "malformed message" and reasons["m2"] == "unknown task"
    assert reasons["m3"] == "invalid arguments" and reasons["m4"] == "malformed message"
    assert "content type 'application/x-python-serialize' is not accepted" in dead["m4"].headers["rt-exc-message"]
    assert "task 'core.nope' is not registered" in dead["m2"].headers["rt-exc-message"]
    boom = next(p for p in dead.values() if p.type == "core.boom")
    assert boom.headers["rt-exc-type"] == "ValueError" and boom.headers["rt-exc-message"] == "boom: kaput"
    assert 'raise ValueError(f"boom: {why}")' in boom.headers["rt-traceback"]
    children = {c.pid for c in psutil.Process(w.pid).children()}  # the supervisor's children consume
    assert int(boom.headers["rt-worker"].rsplit(":", 1)[1]) in children and boom.headers["rt-queue"] == q
    rejected = next(p for p in dead.values() if p.type == "core.reject")
    assert rejected.headers["rt-reason"] == "rejected by task" and rejected.headers["rt-exc-message"] == "not today"


def test_message_is_delivered_again_when_the_worker_is_killed_mid_task(
    app: App, prefix: str, broker_url: str, worker_factory, tmp_path: Path
) -> None:
    # Given a worker running a slow task
    first = worker_factory(APP, "-Q", f"{prefix}.main", prefix=prefix)
    first.wait_for_log("consuming from")
    app.tasks["core.record"].delay("slow", sleep_s=2.0)
    wait_ledger(tmp_path, prefix, "start slow")
    # When it is killed before the task finished (no ack was sent)
    first.kill()
    # Then a new worker gets the same message and completes it exactly once
    second = worker_factory(APP, "-Q", f"{prefix}.main", prefix=prefix)
    second.wait_for_log("consuming from")
    lines = wait_ledger(tmp_path, prefix, "done slow", timeout_s=30)
    assert [x.split(" pid=")[0] for x in lines] == ["start slow", "start slow", "done slow"]
    amqp.wait_depth(broker_url, f"{prefix}.main", 0)


def test_sigterm_finishes_the_running_task_acks_and_exits_zero(
    app: App, prefix: str, broker_url: str, worker_factory, tmp_path: Path
) -> None:
    w = worker_factory(APP, "-Q", f"{prefix}.main", prefix=prefix)
    w.wait_for_log("consuming from")
    app.tasks["core.record"].delay("graceful", sleep_s=1.0)
    wait_ledger(tmp_path, prefix, "start graceful")
    w.signal(signal.SIGTERM)
    assert w.proc.wait(15) == 0
    assert ledger(tmp_path, prefix)[-1] == "done graceful"
    amqp.wait_depth(broker_url, f"{prefix}.main", 0)


def test_a_message_from_raw_pika_following_the_protocol_doc_is_run(
    prefix: str, broker_url: str, worker_factory, tmp_path: Path
) -> None:
    w = worker_factory(APP, "-Q", f"{prefix}.main", prefix=prefix)
    w.wait_for_log("consuming from")
    # exactly what docs/protocol.md tells a producer in another language to send
    amqp.publish_raw(
        broker_url,
        f"{prefix}.main",
        b'{"v": 1, "args": ["from-pika"], "kwargs": {"sleep_s": 0}}',
        exchange="rabbittask",
        content_type="application/json",
        type="core.record",
        message_id="0b7e8f4e-0000-4000-8000-000000000001",
    )
    wait_ledger(tmp_path, prefix, "done from-pika")


def test_unknown_queue_for_the_worker_is_a_clear_error(prefix: str, worker_factory) -> None:
    w = worker_factory(APP, "-Q", f"{prefix}.missing", prefix=prefix)
    assert w.proc.wait(20) != 0
    assert f"has no task on queue(s) {prefix}.missing" in w.log()


def test_a_broken_app_module_is_reported(worker_factory) -> None:
    w = worker_factory("tests.apps.does_not_exist:app")
    assert w.proc.wait(20) != 0
    assert "cannot import app module 'tests.apps.does_not_exist'" in w.log()


def test_a_worker_on_uvloop_runs_sync_and_async_tasks_and_its_async_tasks_run_on_uvloop(
    app: App, prefix: str, worker_factory, tmp_path: Path
) -> None:
    # Given a worker started with --loop uvloop
    w = worker_factory(APP, "--loop", "uvloop", prefix=prefix)
    w.wait_for_log("consuming from")
    assert "child process(es) x 1 thread(s), sync tasks under 1 ms run inline, on uvloop" in w.log()
    # When it gets an async and a sync task
    app.tasks["core.aloop"].delay()
    app.tasks["core.record"].delay("on-uvloop")
    # Then both run, the async one on a uvloop loop
    wait_ledger(tmp_path, prefix, "loop uvloop")
    wait_ledger(tmp_path, prefix, "done on-uvloop")


def test_an_async_task_running_when_its_channel_closes_finishes_and_the_worker_then_stops_at_once(
    app: App, prefix: str, worker_factory, tmp_path: Path, broker_url: str
) -> None:
    # Given an async task running in a worker
    w = worker_factory(APP, "-Q", f"{prefix}.aio", prefix=prefix)
    w.wait_for_log("consuming from")
    app.tasks["core.arecord"].delay("slow", 2.0)
    wait_ledger(tmp_path, prefix, "start slow")
    # When its channel closes under it (its queue deleted: the broker cancels the consumer, the worker
    # closes the channel, and aiormq cancels what the channel's callbacks await)
    amqp.delete(broker_url, [f"{prefix}.aio"])
    # Then the run is not cut off half-way: it finishes, as a sync task's run would, and the worker says
    # the broker redelivers its message
    wait_ledger(tmp_path, prefix, "done slow")
    w.wait_for_log("finished after its channel closed")
    w.wait_for_log("consuming from", count=2)
    # And a warm shutdown has nothing left to wait for
    assert w.stop() == 0
    assert "still running after" not in w.log()


def test_worker_resumes_after_the_broker_closes_its_connections(
    rabbit_node, worker_factory, tmp_path: Path, unique_name: str
) -> None:
    app = make_app(unique_name, rabbit_node.url)
    w = worker_factory(APP, "-Q", f"{unique_name}.main", prefix=unique_name, broker_url=rabbit_node.url)
    w.wait_for_log("consuming from")
    app.tasks["core.record"].delay("before")
    wait_ledger(tmp_path, unique_name, "done before")
    rabbit_node.close_all_connections()
    w.wait_for_log("reconnecting in")
    w.wait_for_log("consuming from", count=2)
    app.tasks["core.record"].delay("after-close")  # the publisher's connection was closed too: reopened once
    wait_ledger(tmp_path, unique_name, "done after-close")
    # and through a restart of the broker node
    rabbit_node.restart()
    w.wait_for_log("consuming from", count=3, timeout_s=60)
    app.tasks["core.record"].delay("after-restart")
    wait_ledger(tmp_path, unique_name, "done after-restart")
    app.close()
