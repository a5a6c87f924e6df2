"""The heartbeat schema: what a worker child writes is what `status` and the dashboard read."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from rabbittask.ops.heartbeat import Heartbeat
from rabbittask.settings import Settings
from rabbittask.worker import events as ev


class _NoPublisher:
    async def side_channel(self) -> None:
        raise AssertionError("a heartbeat is built without sending anything")


def test_the_heartbeat_a_worker_child_writes_reads_back_as_the_same_heartbeat() -> None:
    stats = {"done": 7, "in_flight": 2, "consuming": True, "reconnects": 1}

    async def main() -> dict[str, object]:
        events = ev.Events(Settings(), _NoPublisher(), "shop", ["q1", "q2"], lambda: stats)  # type: ignore[arg-type]
        events.failed, events.dead_lettered = 3, 4
        return events.heartbeat()

    body = asyncio.run(main())
    beat = Heartbeat.decode(json.dumps(body).encode())
    assert beat.body() == body
    assert (beat.pid, beat.ppid, beat.app, beat.queues) == (os.getpid(), os.getppid(), "shop", ("q1", "q2"))
    assert (beat.done, beat.in_flight, beat.consuming, beat.reconnects) == (7, 2, True, 1)
    assert (beat.failed, beat.dead_lettered, beat.retried, beat.interval_s) == (3, 4, 0, Settings().events_heartbeat_s)
    assert beat.key == (beat.host, os.getpid()) and beat.supervisor == (beat.host, os.getppid())


def test_encode_and_decode_round_trip() -> None:
    beat = Heartbeat(host="h", pid=11, ppid=10, ts=1.5, app="a", queues=("q",), done=5, consuming=True)
    assert Heartbeat.decode(beat.encode()) == beat
    assert Heartbeat.decode(beat.body()) == beat


def test_a_reader_needs_only_host_and_pid_and_ignores_fields_it_does_not_know() -> None:
    beat = Heartbeat.decode(b'{"host": "h", "pid": 11, "queues": ["q"], "from_a_newer_worker": 1}')
    assert (beat.ppid, beat.done, beat.consuming, beat.interval_s) == (11, 0, False, 2.0)
    assert "from_a_newer_worker" not in beat.body()


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"pid": 1}', b'{"host": "h", "pid": "x"}'])
def test_a_body_that_is_no_heartbeat_is_a_value_error(body: bytes) -> None:
    with pytest.raises(ValueError):
        Heartbeat.decode(body)


def test_a_heartbeat_is_frozen() -> None:
    beat = Heartbeat(host="h", pid=1)
    with pytest.raises(ValueError):
        beat.done = 3  # type: ignore[misc]
