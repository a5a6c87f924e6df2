"""After a Celery message ran (or was refused), before its ack: the Celery result, then the next steps.

The settler (worker/settle.py) calls `CeleryFinish.finish` for every Celery delivery that ended (not
for a retry or a re-park: a retry is no end, as in Celery's rpc and Redis backends a `RETRY` state is
not final). In order, each confirmed before the ack:

1. the result record where the Celery caller reads it (`celery_result_backend`): `SUCCESS`; `FAILURE`
   with the exception's type and message (a builtin type is rebuilt as itself by Celery); `REVOKED`
   for an expired message, as Celery does;
2. on success, the next step of a chain (`embed["chain"]`, the last item) and each link callback, as
   Celery protocol 2 messages with the result as the first argument (unless the signature is immutable),
   their ids those Celery froze in the signature, so `AsyncResult` of a chain finds them;
3. on failure, each errback with the failed task's id as its argument (Celery's old-style errbacks).

A failure is also dead-lettered by the settler, with its reason headers, after this.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from rabbittask.celery.delivery import CeleryDelivery
from rabbittask.celery.protocol import CeleryRequest, encode_request, exception_meta, result_meta
from rabbittask.celery.results import CeleryResults
from rabbittask.errors import PayloadError
from rabbittask.message import CONTENT_TYPE, Outgoing, new_id
from rabbittask.worker.outcome import Outcome, Reason

if TYPE_CHECKING:
    from rabbittask.app import App
    from rabbittask.publish.aio import AsyncPublisher


class CeleryFinish:
    """Results and next steps of Celery messages, for the settler of a worker with Celery queues."""

    def __init__(self, app: App, publisher: AsyncPublisher) -> None:
        self.app = app
        self.publisher = publisher
        url = app.settings.celery_result_backend
        s = app.settings
        self.results = CeleryResults(url, publisher, s.result_expires_s, s.result_store_timeout_s) if url else None

    def has_work(self, outcome: Outcome) -> bool:
        """True when a successful Celery message needs more than its ack (a result, a next step)."""
        message = outcome.message
        if type(message) is not CeleryDelivery:
            return False
        request = message.request
        return self.results is not None or (request is not None and bool(request.chain or request.callbacks))

    async def finish(self, outcome: Outcome, publish: Any) -> tuple[Outcome, bool]:
        """Write the result, send the next steps; the (maybe changed) outcome and False if something failed.

        `publish(outcome, msg, what)` publishes one message until confirmed (the settler's `_confirmed`).
        """
        message = outcome.message
        assert isinstance(message, CeleryDelivery)
        request = message.request
        props = message.header.properties
        task_id = props.message_id or ""
        if self.results is not None and task_id:
            outcome, record = _record(outcome, request, task_id)
            reply_to = props.reply_to or None
            if not await self.results.send(task_id, props.correlation_id or task_id, reply_to, record):
                return outcome, False
        if request is None:
            return outcome, True
        if outcome.ok:
            for msg in self._next_steps(request, outcome.value, reply_to=props.reply_to):
                if not await publish(outcome, msg, f"next step {msg.task_name!r}"):
                    return outcome, False
        elif outcome.reason is not None and outcome.reason.ran:
            for sig in request.errbacks:
                msg = self._message(sig, [request.id], request, props.reply_to, immutable=True)
                if not await publish(outcome, msg, f"errback {msg.task_name!r}"):
                    return outcome, False
        return outcome, True

    def _next_steps(self, request: CeleryRequest, value: Any, reply_to: str | None) -> list[Outgoing]:
        out: list[Outgoing] = []
        if request.chain:
            *rest, step = request.chain
            out.append(self._message(step, [value], request, reply_to, chain=rest))
        for sig in request.callbacks:
            out.append(self._message(sig, [value], request, reply_to))
        return out

    def _message(
        self,
        sig: dict[str, Any],
        first: list[Any],
        parent: CeleryRequest,
        reply_to: str | None,
        *,
        chain: list[dict[str, Any]] | None = None,
        immutable: bool = False,
    ) -> Outgoing:
        """The Celery message of signature `sig`, called with `first` before its own arguments."""
        options: dict[str, Any] = sig.get("options") or {}
        name = str(sig["task"])
        args = list(sig.get("args") or [])
        if not (immutable or sig.get("immutable")):
            args = [*first, *args]
        task_id = str(options.get("task_id") or new_id())
        headers, body = encode_request(
            name,
            task_id,
            args,
            dict(sig.get("kwargs") or {}),
            root_id=parent.root_id or parent.id,
            parent_id=parent.id,
            group=options.get("group_id"),
            callbacks=_links(options.get("link")),
            errbacks=_links(options.get("link_error")),
            chain=chain or None,
        )
        task = self.app.tasks.get(name)
        queue = options.get("queue") or (task.queue if task is not None else None) or _queue_of(parent, self.app)
        return Outgoing(
            routing_key=str(queue),
            body=body,
            message_id=task_id,
            task_name=name,
            headers=headers,
            reply_to=options.get("reply_to") or reply_to,
            correlation_id=task_id,
            content_type=CONTENT_TYPE,
            exchange="",  # the default exchange: straight to the queue, whatever Celery bound to it
        )


def _links(value: Any) -> list[dict[str, Any]] | None:
    if isinstance(value, dict):
        return [value]
    return list(value) if isinstance(value, list) and value else None


def _queue_of(parent: CeleryRequest, app: App) -> str:
    task = app.tasks.get(parent.task)
    return task.queue if task is not None else app.settings.default_queue


def _record(outcome: Outcome, request: CeleryRequest | None, task_id: str) -> tuple[Outcome, bytes]:
    """Celery's result record of an outcome; a return value that is not JSON fails the task."""
    parent_id = request.parent_id if request is not None else None
    group = request.group if request is not None else None
    now = time.time()
    if outcome.ok:
        try:
            return outcome, result_meta(task_id, "SUCCESS", outcome.value, parent_id=parent_id, group=group, now_s=now)
        except PayloadError as e:
            outcome = outcome._replace(reason=Reason.NOT_SERIALISABLE, exc_type="TypeError", exc_message=str(e))
    if outcome.reason is Reason.EXPIRED:
        exc = {"exc_type": "TaskRevokedError", "exc_message": ["expired"], "exc_module": "celery.exceptions"}
        return outcome, result_meta(task_id, "REVOKED", exc, parent_id=parent_id, group=group, now_s=now)
    reason = outcome.reason.value if outcome.reason is not None else ""
    text = (
        outcome.exc_message if outcome.reason is not None and outcome.reason.ran else f"{reason}: {outcome.exc_message}"
    )
    exc = exception_meta(outcome.exc_type or "TaskError", text)
    record = result_meta(task_id, "FAILURE", exc, outcome.traceback, parent_id=parent_id, group=group, now_s=now)
    return outcome, record
