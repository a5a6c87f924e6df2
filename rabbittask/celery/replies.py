"""Celery's rpc:// results of the Celery messages this process sends: replies on a reply queue of its own.

Celery's `RPCBackend` worker publishes a task's result to the message's `reply_to` with
`correlation_id` = the task id. Each process keeps one reply queue (declared before its first send,
idle-expiring after a day like Celery's), takes what is in it with `basic.get` when a handle asks,
and keeps the final records in memory by task id until read: a reply is one message, read once,
as with Celery's rpc:// backend (so `get()` works in the process that sent the task).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid

import pika
from pika.adapters.blocking_connection import BlockingChannel

from rabbittask.amqp.blocking import connect
from rabbittask.celery.protocol import to_record
from rabbittask.results.backend import ResultBackend
from rabbittask.settings import Settings

QUEUE_EXPIRES_MS = 86_400_000  # an idle reply queue of a process that is gone is deleted after a day

POLL_S = 0.05  # how often a waiting handle looks again


class CeleryRpcReader(ResultBackend):
    """Reads rpc:// replies of Celery workers for this process's Celery messages (`reply_queue`)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__("rpc://")
        self.settings = settings
        self._lock = threading.Lock()
        self._records: dict[str, bytes] = {}
        self._pid = 0
        self._queue = ""
        self._connection: pika.BlockingConnection | None = None

    @property
    def reply_queue(self) -> str:
        """This process's reply queue, declared on first use (again after a fork)."""
        with self._lock:
            self._channel()
            return self._queue

    def _channel(self) -> BlockingChannel:
        connection = self._connection
        if self._pid != os.getpid() or connection is None or not connection.is_open:
            self._pid, self._records = os.getpid(), {}
            self._queue = self._queue or f"rabbittask.celery-replies.{uuid.uuid4().hex}"
            connection = self._connection = connect(self.settings, "celery rpc replies")
            connection.channel().queue_declare(self._queue, durable=False, arguments={"x-expires": QUEUE_EXPIRES_MS})
        return connection.channel()

    def fetch(self, task_id: str) -> bytes | None:
        with self._lock:
            if task_id not in self._records:
                channel = self._channel()
                while True:
                    method, props, body = channel.basic_get(self._queue, auto_ack=True)
                    if method is None:
                        break
                    record = to_record(body)
                    if record is not None and props.correlation_id:
                        self._records[props.correlation_id] = record
                channel.close()
            return self._records.get(task_id)

    def forget(self, task_id: str) -> None:
        with self._lock:
            self._records.pop(task_id, None)

    def store(self, task_id: str, record: bytes, expires_s: float) -> None:
        raise NotImplementedError("Celery's rpc:// results are written by the worker that ran the task")

    def wait(self, task_id: str, timeout_s: float | None) -> bytes | None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while (record := self.fetch(task_id)) is None:
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(POLL_S)
        return record

    async def afetch(self, task_id: str) -> bytes | None:
        return await asyncio.to_thread(self.fetch, task_id)

    async def aforget(self, task_id: str) -> None:
        self.forget(task_id)

    async def astore(self, task_id: str, record: bytes, expires_s: float) -> None:
        self.store(task_id, record, expires_s)

    async def await_(self, task_id: str, timeout_s: float | None) -> bytes | None:
        return await asyncio.to_thread(self.wait, task_id, timeout_s)

    def close(self) -> None:
        with self._lock:
            if self._connection is not None and self._connection.is_open:
                self._connection.close()
            self._connection = None

    async def aclose(self) -> None:
        self.close()
