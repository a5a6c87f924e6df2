"""Reading Celery's results from a rabbittask producer: `CeleryHandle` and the Redis reader behind it.

A message sent with `celery=True` runs on a Celery worker (or a rabbittask worker with `accept_celery`),
which writes Celery's record: in Redis, `celery-task-meta-<id>`. The reader turns a final record
(`SUCCESS`, `FAILURE`, `REVOKED`) into rabbittask's result record, so `TaskHandle`'s `get()`, `status`,
`forget()` work unchanged; a state that is not final (`PENDING`, `STARTED`, `RETRY`) reads as no result
yet. Celery's Redis backend publishes each result too; this reader polls the key instead (every
`POLL_S`), which is enough for a migration path and keeps it one small module.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic_core import from_json

from rabbittask.celery.protocol import READY, task_key
from rabbittask.errors import ConfigError
from rabbittask.handle import TaskHandle
from rabbittask.results.backends.redis import RedisBackend
from rabbittask.results.record import encode_failure, encode_success

if TYPE_CHECKING:
    from rabbittask.app import App
    from rabbittask.results.backend import ResultBackend

POLL_S = 0.05
_READERS: weakref.WeakKeyDictionary[App, CeleryRedisReader] = weakref.WeakKeyDictionary()


def to_record(data: bytes | str | None) -> bytes | None:
    """rabbittask's result record of a final Celery record; None when there is none (yet)."""
    if data is None:
        return None
    meta = from_json(data)
    if not isinstance(meta, dict) or meta.get("status") not in READY:
        return None
    if meta["status"] == "SUCCESS":
        return encode_success("", meta.get("result"))
    exc: Any = meta.get("result") if isinstance(meta.get("result"), dict) else {}
    args = exc.get("exc_message")
    text = ", ".join(map(str, args)) if isinstance(args, list) else str(args or "")
    exc_type = str(exc.get("exc_type") or meta["status"])
    return encode_failure("", exc_type, text, str(meta.get("traceback") or ""), str(meta["status"]).lower())


class CeleryRedisReader(RedisBackend):
    """Reads (and forgets) Celery's results in Redis, as rabbittask result records."""

    def fetch(self, task_id: str) -> bytes | None:
        with self._errors("read", task_id):
            return to_record(self._client.get(task_key(task_id)))

    async def afetch(self, task_id: str) -> bytes | None:
        with self._errors("read", task_id):
            return to_record(await self._aclient().get(task_key(task_id)))

    def forget(self, task_id: str) -> None:
        with self._errors("forget", task_id):
            self._client.delete(task_key(task_id))

    async def aforget(self, task_id: str) -> None:
        with self._errors("forget", task_id):
            await self._aclient().delete(task_key(task_id))

    def wait(self, task_id: str, timeout_s: float | None) -> bytes | None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while (record := self.fetch(task_id)) is None:
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(POLL_S)
        return record

    async def await_(self, task_id: str, timeout_s: float | None) -> bytes | None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while (record := await self.afetch(task_id)) is None:
            if deadline is not None and time.monotonic() >= deadline:
                return None
            await asyncio.sleep(POLL_S)
        return record


def celery_reader(app: App) -> ResultBackend:
    """The reader of Celery results for `app` (one per app); `ConfigError` saying what to set."""
    url = app.settings.celery_result_backend
    if url is None:
        raise ConfigError(
            f"app {app.name!r} has no celery_result_backend, so results of Celery messages cannot be read: set it to "
            "the Celery workers' result_backend (a redis:// URL)"
        )
    if url == "rpc://":
        raise ConfigError(
            f"app {app.name!r}: reading results of messages sent with celery=True over rpc:// is not supported; use "
            "a redis:// result backend on the Celery workers and as celery_result_backend here"
        )
    reader = _READERS.get(app)
    if reader is None:
        reader = _READERS[app] = CeleryRedisReader(url)
    return reader


@dataclass(frozen=True, slots=True)
class CeleryHandle(TaskHandle):
    """A `TaskHandle` of a Celery message: `get()` reads Celery's result (`celery_result_backend`)."""

    def _backend(self) -> ResultBackend:
        if self.app is None:
            raise ConfigError(f"handle of task {self.task_name!r} (id {self.id}) has no app to read results from")
        return celery_reader(self.app)
