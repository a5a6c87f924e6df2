"""Reading Celery's results from a rabbittask producer: `CeleryHandle` and the reader behind it.

A message sent with `celery=True` runs on a Celery worker (or a rabbittask worker with `accept_celery`),
which writes Celery's record: in Redis, `celery-task-meta-<id>` (redis_reader.py); over rpc://, a
reply to the message's `reply_to` (replies.py). The readers turn a final record (`SUCCESS`, `FAILURE`,
`REVOKED`) into rabbittask's result record, so `TaskHandle`'s `get()`, `status`, `forget()` work
unchanged; a state that is not final (`PENDING`, `STARTED`, `RETRY`) reads as no result yet. Both
readers poll (every 50 ms), which is enough for a migration path and keeps each one small.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rabbittask.errors import ConfigError
from rabbittask.handle import TaskHandle

if TYPE_CHECKING:
    from rabbittask.app import App
    from rabbittask.results.backend import ResultBackend

_READERS: weakref.WeakKeyDictionary[App, ResultBackend] = weakref.WeakKeyDictionary()


def celery_reader(app: App) -> ResultBackend:
    """The reader of Celery results for `app` (one per app); `ConfigError` saying what to set."""
    url = app.settings.celery_result_backend
    if url is None:
        raise ConfigError(
            f"app {app.name!r} has no celery_result_backend, so results of Celery messages cannot be read: set it to "
            "the Celery workers' result_backend (a redis:// URL)"
        )
    reader = _READERS.get(app)
    if reader is None:
        if url == "rpc://":
            from rabbittask.celery.replies import CeleryRpcReader

            reader = _READERS[app] = CeleryRpcReader(app.settings)
        else:
            from rabbittask.celery.redis_reader import CeleryRedisReader  # the redis extra

            reader = _READERS[app] = CeleryRedisReader(url)
    return reader


@dataclass(frozen=True, slots=True)
class CeleryHandle(TaskHandle[Any]):
    """A `TaskHandle` of a Celery message: `get()` reads Celery's result (`celery_result_backend`)."""

    def _backend(self) -> ResultBackend:
        if self.app is None:
            raise ConfigError(f"handle of task {self.task_name!r} (id {self.id}) has no app to read results from")
        return celery_reader(self.app)
