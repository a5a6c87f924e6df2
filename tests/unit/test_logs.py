"""Task loggers and the worker's log formats: records name their task; JSON lines for log pipelines."""

from __future__ import annotations

import json
import logging
import sys

import pytest

import rabbittask
from rabbittask.context import running
from rabbittask.logs import JsonFormatter, TaskContextFilter, TextFormatter


def record(logger: logging.Logger, msg: str, *args: object, **kwargs: object) -> logging.LogRecord:
    """What `logger.info(msg, *args)` hands its handlers, filters applied."""
    rec = logger.makeRecord(logger.name, logging.INFO, __file__, 1, msg, args, None, **kwargs)  # type: ignore[arg-type]
    for f in logger.filters:
        assert f.filter(rec)  # type: ignore[union-attr]
    return rec


def test_a_task_logger_puts_the_running_task_on_its_records() -> None:
    log = rabbittask.get_task_logger("shop.tasks")
    assert rabbittask.get_task_logger("shop.tasks") is log and len(log.filters) == 1  # added once
    token = running.set(("shop.tasks.charge", "id-42"))
    try:
        inside = record(log, "charging order %d", 7)
    finally:
        running.reset(token)
    outside = record(log, "not in a task")
    assert (inside.task_name, inside.task_id) == ("shop.tasks.charge", "id-42")  # type: ignore[attr-defined]
    assert (outside.task_name, outside.task_id) == (None, None)  # type: ignore[attr-defined]


def test_the_text_format_shows_the_task_before_the_message_only_for_task_records() -> None:
    rec = logging.LogRecord("shop.tasks", logging.INFO, __file__, 1, "charging order %d", (7,), None)
    rec.task_name, rec.task_id = "shop.tasks.charge", "id-42"
    line = TextFormatter().format(rec)
    assert line.endswith(f" INFO [{rec.process}] shop.tasks: [shop.tasks.charge id-42] charging order 7")
    plain = logging.LogRecord("rabbittask.worker", logging.INFO, __file__, 1, "worker stopped", (), None)
    TaskContextFilter().filter(plain)
    assert TextFormatter().format(plain).endswith("rabbittask.worker: worker stopped")


def test_the_json_format_is_one_object_per_line_with_task_fields_and_masked_urls() -> None:
    rec = logging.LogRecord(
        "rabbittask.worker", logging.INFO, __file__, 1, "connected to %s", ("amqp://u:secret@h:5672/",), None
    )
    rec.rt = {"task": "shop.send", "id": "i-1", "runtime_s": 0.012, "outcome": "succeeded"}
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "connected to amqp://u:***@h:5672/"
    assert data["level"] == "INFO" and data["logger"] == "rabbittask.worker" and data["pid"] == rec.process
    assert data["outcome"] == "succeeded" and data["runtime_s"] == 0.012
    assert data["ts"].endswith("+00:00")


def test_the_json_format_carries_an_exception_as_fields() -> None:
    try:
        raise ValueError("bad input")
    except ValueError:
        exc_info = sys.exc_info()
    rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), exc_info)
    data = json.loads(JsonFormatter().format(rec))
    assert data["exc_type"] == "ValueError" and data["exc_message"] == "bad input"
    assert "Traceback (most recent call last)" in data["traceback"]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_setup_logging_replaces_the_root_handlers(fmt: str) -> None:
    from rabbittask.logs import setup_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("warning", fmt)  # type: ignore[arg-type]
        assert len(root.handlers) == 1 and root.level == logging.WARNING
        expected = JsonFormatter if fmt == "json" else TextFormatter
        assert isinstance(root.handlers[0].formatter, expected)
    finally:
        root.handlers[:], _ = saved[0], None
        root.setLevel(saved[1])


def test_several_lines_in_one_record_each_get_their_own_prefix_time_and_json_object() -> None:
    # What the worker's Successes logs: one record for many success lines
    rec = logging.LogRecord("rabbittask.worker.tasks", logging.INFO, __file__, 1, "%s", ("a\nb",), None)
    rec.rt_lines = ["task t [1] succeeded in 5 µs", "task t [2] succeeded in 6 µs"]
    rec.rt_times = [1767225600.001, 1767225601.002]
    rec.rt_each = [{"id": "1", "outcome": "succeeded"}, {"id": "2", "outcome": "succeeded"}]
    text = TextFormatter().format(rec).splitlines()
    assert len(text) == 2
    assert text[0].endswith(f",001 INFO [{rec.process}] rabbittask.worker.tasks: task t [1] succeeded in 5 µs")
    assert text[1].endswith(f",002 INFO [{rec.process}] rabbittask.worker.tasks: task t [2] succeeded in 6 µs")
    objects = [json.loads(line) for line in JsonFormatter().format(rec).splitlines()]
    assert [(o["id"], o["message"], o["ts"]) for o in objects] == [
        ("1", "task t [1] succeeded in 5 µs", "2026-01-01T00:00:00.001+00:00"),
        ("2", "task t [2] succeeded in 6 µs", "2026-01-01T00:00:01.002+00:00"),
    ]


async def test_success_lines_are_written_together_and_before_a_later_failure_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import asyncio

    from rabbittask.worker import tasklog

    caplog.set_level(logging.INFO, logger="rabbittask.worker.tasks")

    class Done:  # the fields of an Outcome that a success line reads
        def __init__(self, n: int) -> None:
            self.task_name, self.message_id, self.runtime_s = "t", str(n), 0.001

    successes = tasklog.Successes()
    for n in range(3):
        successes.add(Done(n))  # type: ignore[arg-type]
    assert caplog.records == []  # not yet: within FLUSH_S
    await asyncio.sleep(tasklog.FLUSH_S * 2)
    (record,) = caplog.records
    assert record.rt_lines == [f"task t [{n}] succeeded in 1 ms" for n in range(3)]  # type: ignore[attr-defined]
