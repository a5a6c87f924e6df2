"""Celery's Redis results (`celery-task-meta-<id>`), read as rabbittask result records (the redis extra)."""

from __future__ import annotations

import asyncio
import time

from rabbittask.celery.protocol import task_key, to_record
from rabbittask.results.backends.redis import RedisBackend

POLL_S = 0.05  # how often a waiting handle looks again


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
