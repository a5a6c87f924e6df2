"""Logging: task loggers whose records name their task, and the worker's text and JSON log formats.

`get_task_logger(__name__)` is a standard `logging.Logger` with a filter that puts the running task's
name and id on each record (`record.task_name`, `record.task_id`; None outside a task). The worker's
formatters show them: the text format as `[shop.tasks.send_email 3f2c...]` before the message, the
JSON format as fields. A filter looks up one ContextVar per record and costs nothing when the record's
level is disabled (the logger checks the level first).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any, Literal

from rabbittask.context import running
from rabbittask.settings import mask_url

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


class TaskContextFilter(logging.Filter):
    """Put the running task's name and id on every record it sees (None and None outside a task)."""

    def filter(self, record: logging.LogRecord) -> bool:
        run = running.get()
        if run is None:
            if not hasattr(record, "task_id"):  # keep what an inner filter or `extra=` set
                record.task_name = record.task_id = None
        else:
            record.task_name, record.task_id = run
        return True


_FILTER = TaskContextFilter()


def get_task_logger(name: str) -> logging.Logger:
    """A logger for task code, whose records carry the running task's name and id.

    ```python
    log = rabbittask.get_task_logger(__name__)

    @app.task
    def charge(order_id: int) -> None:
        log.info("charging order %d", order_id)   # ... INFO ... shop.tasks: [shop.tasks.charge 3f2c...] charging ...
    ```
    """
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger


class TextFormatter(logging.Formatter):
    """The worker's text lines: time, level, pid, logger, then `[task id]` when the record is about a task."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._second = -1
        self._second_text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        # A worker logs a line per task: format each second once, not once per line (~2 µs each).
        second = int(record.created)
        if second != self._second:
            self._second, self._second_text = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._second_text},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        lines = getattr(record, "rt_lines", None)
        if lines is None:
            return super().format(record)
        # Several lines in one record (the worker's successes): each gets the prefix, with its own time.
        times = getattr(record, "rt_times", None) or [record.created] * len(lines)
        record.message = ""
        out = []
        for line, at in zip(lines, times, strict=True):
            record.created, record.msecs = at, round((at - int(at)) * 1000, 3)
            record.asctime = self.formatTime(record)
            out.append(self._style.format(record) + line)
        return "\n".join(out)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        task_id = getattr(record, "task_id", None)
        if task_id is not None:
            record.message = f"[{getattr(record, 'task_name', None)} {task_id}] {record.message}"
        fields = getattr(record, "rt", None)
        if isinstance(fields, dict) and fields.get("traceback"):  # a failed task's, under its line
            record.message = f"{record.message}\n{str(fields['traceback']).rstrip()}"
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log pipelines: time (UTC ISO 8601), level, logger, pid, message, task fields.

    Fields a record was given with `extra={"rt": {...}}` go in too (the worker's task lines carry the
    task's name, id, runtime, outcome and reason there), and `exc_info` becomes `exc_type`, `exc_message`
    and `traceback`. Passwords in URLs are masked.
    """

    def format(self, record: logging.LogRecord) -> str:
        lines = getattr(record, "rt_lines", None)
        if lines is not None:  # several lines in one record: an object each
            base = self._fields(record)
            each = getattr(record, "rt_each", None) or [{} for _ in lines]
            times = getattr(record, "rt_times", None) or [record.created] * len(lines)
            return "\n".join(
                json.dumps({**base, "ts": _iso(at), "message": line, **fields}, default=str, ensure_ascii=False)
                for line, fields, at in zip(lines, each, times, strict=True)
            )
        return json.dumps(self._fields(record), default=str, ensure_ascii=False)

    def _fields(self, record: logging.LogRecord) -> dict[str, Any]:
        data: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": mask_url(record.getMessage()),
        }
        task_id = getattr(record, "task_id", None)
        if task_id is not None:
            data["task_name"] = getattr(record, "task_name", None)
            data["task_id"] = task_id
        fields = getattr(record, "rt", None)
        if isinstance(fields, dict):
            data.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            data["exc_type"] = record.exc_info[0].__name__
            data["exc_message"] = mask_url(str(record.exc_info[1]))
            data["traceback"] = mask_url(self.formatException(record.exc_info))
        return data


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")


structured = False
"""True when the process logs JSON: only then do the worker's per-task lines build their fields."""


def setup_logging(level: str, log_format: LogFormat = "text") -> None:
    """Log to stderr in `log_format`, at `level`; records name their task when they are about one."""
    global structured
    structured = log_format == "json"
    # A worker logs a line per task: skip what its formats never show (the logging docs' "Optimization"):
    # the caller's frame, thread and multiprocessing names. About a third of a record's cost.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(_FILTER)  # every record logged while a task runs names it, whoever logs it
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiormq logs every broker-initiated close with a traceback; the worker logs one line saying what
    # happened and what it does about it. At debug, everything.
    logging.getLogger("aiormq").setLevel(logging.NOTSET if level.upper() == "DEBUG" else logging.CRITICAL)
