"""The Redis result backend (`pip install 'rabbittask[redis]'`; `result_backend="redis://host:6379/0"`).

A result is one string key, `rabbittask:result:<task id>`, set with an expiry (`SET ... PX`). The
store also publishes on a channel of the same name in the same transaction, so a waiter that
subscribed first wakes at once; it reads the key after subscribing, and again every second, so a
publish it missed (a reconnect, a result stored before it subscribed) costs at most that second.
URL schemes: redis://, rediss:// (TLS) and unix:// (socket path), with redis-py's URL options.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
import redis.asyncio

from rabbittask.errors import ResultBackendError
from rabbittask.results.backend import ResultBackend, on_loop_shutdown
from rabbittask.settings import mask_url

KEY_PREFIX = "rabbittask:result:"
RECHECK_S = 1.0
# Bounded waits unless the URL sets its own (`?socket_timeout=...`): a dead Redis fails a call, never hangs it.
CLIENT_OPTIONS: dict[str, Any] = {"socket_connect_timeout": 5.0, "socket_timeout": 10.0}


def result_key(task_id: str) -> str:
    """The key (and pub/sub channel) of a task's result."""
    return KEY_PREFIX + task_id


class RedisBackend(ResultBackend):
    """Results in Redis: sync calls on a thread-safe client, async ones on a client per event loop."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._client = redis.Redis.from_url(url, **CLIENT_OPTIONS)
        self._aclients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis] = (
            weakref.WeakKeyDictionary()
        )

    def _aclient(self) -> redis.asyncio.Redis:
        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None:
            client = self._aclients[loop] = redis.asyncio.Redis.from_url(self.url, **CLIENT_OPTIONS)
            on_loop_shutdown(self.aclose)
        return client

    @contextmanager
    def _errors(self, what: str, task_id: str) -> Iterator[None]:
        try:
            yield
        except redis.RedisError as e:
            raise ResultBackendError(
                f"result backend {mask_url(self.url)}: {what} of the result of task {task_id} failed: "
                f"{mask_url(str(e) or type(e).__name__)}"
            ) from e

    # -- sync --------------------------------------------------------------------------------------------

    def store(self, task_id: str, record: bytes, expires_s: float) -> None:
        key = result_key(task_id)
        with self._errors("store", task_id), self._client.pipeline(transaction=True) as pipe:
            pipe.set(key, record, px=max(1, int(expires_s * 1000)))
            pipe.publish(key, b"")
            pipe.execute()

    def fetch(self, task_id: str) -> bytes | None:
        with self._errors("fetch", task_id):
            return _bytes(self._client.get(result_key(task_id)))

    def forget(self, task_id: str) -> None:
        with self._errors("delete", task_id):
            self._client.delete(result_key(task_id))

    def wait(self, task_id: str, timeout_s: float | None) -> bytes | None:
        record = self.fetch(task_id)
        if record is not None:
            return record
        key, left = result_key(task_id), _countdown(timeout_s)
        with self._errors("wait for", task_id):
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call, unused-ignore]
            try:
                pubsub.subscribe(key)
                while (record := _bytes(self._client.get(key))) is None:
                    wait_s = left()
                    if wait_s <= 0:
                        return None
                    pubsub.get_message(timeout=wait_s)
            finally:
                pubsub.close()
        return record

    def close(self) -> None:
        self._client.close()

    # -- async -------------------------------------------------------------------------------------------

    async def astore(self, task_id: str, record: bytes, expires_s: float) -> None:
        key = result_key(task_id)
        with self._errors("store", task_id):
            async with self._aclient().pipeline(transaction=True) as pipe:
                pipe.set(key, record, px=max(1, int(expires_s * 1000)))
                pipe.publish(key, b"")
                await pipe.execute()

    async def afetch(self, task_id: str) -> bytes | None:
        with self._errors("fetch", task_id):
            return _bytes(await self._aclient().get(result_key(task_id)))

    async def aforget(self, task_id: str) -> None:
        with self._errors("delete", task_id):
            await self._aclient().delete(result_key(task_id))

    async def await_(self, task_id: str, timeout_s: float | None) -> bytes | None:
        record = await self.afetch(task_id)
        if record is not None:
            return record
        client, key, left = self._aclient(), result_key(task_id), _countdown(timeout_s)
        with self._errors("wait for", task_id):
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(key)
                while (record := _bytes(await client.get(key))) is None:
                    wait_s = left()
                    if wait_s <= 0:
                        return None
                    await pubsub.get_message(timeout=wait_s)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
        return record

    async def aclose(self) -> None:
        client = self._aclients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()


def _bytes(value: Any) -> bytes | None:
    """A GET reply as bytes (redis-py types its replies loosely)."""
    return value if value is None or isinstance(value, bytes) else bytes(value)


def _countdown(timeout_s: float | None) -> Callable[[], float]:
    """Seconds to wait for the next message: at most `RECHECK_S`, never past the deadline."""
    if timeout_s is None:
        return lambda: RECHECK_S
    deadline = time.monotonic() + timeout_s
    return lambda: min(RECHECK_S, deadline - time.monotonic())
