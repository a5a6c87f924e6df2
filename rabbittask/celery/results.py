"""Celery's results, written where Celery callers read them: `rpc://` replies and the Redis key layout.

rpc:// (Celery's `RPCBackend`): the result record goes to the message's `reply_to` queue through the
default exchange with `correlation_id` = the task id, not mandatory (a caller that is gone has no
queue). Redis (Celery's `RedisBackend`): `SETEX celery-task-meta-<id>` for `result_expires_s`, then
`PUBLISH` on the same name, which `AsyncResult.get()` waits on. Either way the record is Celery's
JSON (protocol.py), so the Celery caller needs no change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from rabbittask.celery.protocol import task_key
from rabbittask.message import Outgoing
from rabbittask.settings import mask_url

if TYPE_CHECKING:
    from rabbittask.publish.aio import AsyncPublisher

log = logging.getLogger(__name__)

RPC = "rpc://"


class CeleryResults:
    """Writes Celery result records to the backend Celery callers use (`celery_result_backend`)."""

    def __init__(self, url: str, publisher: AsyncPublisher, expires_s: float, store_timeout_s: float) -> None:
        self.url = url
        self.publisher = publisher
        self.expires_s = max(1, round(expires_s))
        self.store_timeout_s = store_timeout_s
        self._redis: Any = None
        if url != RPC:
            try:
                import redis.asyncio
            except ImportError:
                from rabbittask.errors import ConfigError

                raise ConfigError(
                    f"celery_result_backend {mask_url(url)!r} needs the redis package: pip install 'rabbittask[redis]'"
                ) from None
            self._redis = redis.asyncio.from_url(url)

    async def send(self, task_id: str, correlation_id: str, reply_to: str | None, record: bytes) -> bool:
        """Write one result; False when it could not be stored (the message then goes back to its queue)."""
        if self._redis is None:
            if reply_to:
                await self._reply(task_id, correlation_id, reply_to, record)
            return True
        return await self._store(task_id, record)

    async def _reply(self, task_id: str, correlation_id: str, reply_to: str, record: bytes) -> None:
        msg = Outgoing(
            routing_key=reply_to,
            body=record,
            message_id=task_id,
            task_name="",
            correlation_id=correlation_id,
            exchange="",
            mandatory=False,  # a caller that is gone has no reply queue: the broker drops the reply
        )
        try:
            await self.publisher.publish(msg)
        except Exception as e:  # noqa: BLE001 - the task ran; a lost reply is the caller's timeout
            log.warning("task [%s]: Celery reply to %s not delivered: %s", task_id, reply_to, e)

    async def _store(self, task_id: str, record: bytes) -> bool:
        key = task_key(task_id)
        deadline, pause_s = time.monotonic() + self.store_timeout_s, 0.1
        while True:
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.setex(key, self.expires_s, record)
                    pipe.publish(key, record)
                    await pipe.execute()
                return True
            except Exception as e:  # noqa: BLE001 - any Redis failure: the message must not be acked
                if time.monotonic() + pause_s > deadline:
                    log.error("task [%s]: its Celery result could not be stored in %s (%s)", task_id, self.url, e)
                    return False
                log.warning("task [%s]: storing its Celery result failed (%s); retrying", task_id, mask_url(str(e)))
                await asyncio.sleep(pause_s)
                pause_s = min(pause_s * 2, 2.0)

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
