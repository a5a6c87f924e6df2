"""The worker's per-task log lines, without a broker: one per settled task, and nothing at all when INFO is off."""

from __future__ import annotations

import logging

import pytest

from rabbittask.worker import tasklog
from rabbittask.worker.outcome import Outcome, Reason
from tests.unit.test_settler import Rig, failed


async def test_a_success_is_one_info_line_and_a_failure_one_error_line_with_the_dlq(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="rabbittask.worker.tasks")
    rig = Rig()
    await rig.settle(Outcome(rig.delivered(1), "t.task", value=None, runtime_s=0.0123))
    await rig.settle(failed(rig.delivered(2), Reason.FAILED))
    await rig.settle(failed(rig.delivered(3), Reason.EXPIRED))
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "rabbittask.worker.tasks"]
    assert lines == [
        ("INFO", "task t.task [m-1] succeeded in 12.3 ms"),
        ("ERROR", "task t.task [m-2] failed after 0 µs (task raised): ValueError: bad; dead-lettered to q.dlq"),
        ("WARNING", "task t.task [m-3] dead-lettered to q.dlq without running (expired): ValueError: bad"),
    ]


async def test_with_info_off_a_success_costs_no_call_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    logging.getLogger("rabbittask.worker.tasks").setLevel(logging.WARNING)
    try:
        rig = Rig()  # asks once, when it is made
        assert rig.settler.log_successes is False

        def never(outcome: Outcome) -> None:
            raise AssertionError("a success line was formatted with INFO off")

        monkeypatch.setattr(tasklog, "succeeded", never)
        await rig.settle(Outcome(rig.delivered(1), "t.task", value=None))
        assert rig.log == [("ack", 1)]
    finally:
        logging.getLogger("rabbittask.worker.tasks").setLevel(logging.NOTSET)


def test_durations_read_at_a_glance() -> None:
    assert [tasklog.duration(s) for s in (0.000085, 0.0123, 0.5, 1.25, 61.0)] == [
        "85 µs",
        "12.3 ms",
        "500 ms",
        "1.25 s",
        "61 s",
    ]
