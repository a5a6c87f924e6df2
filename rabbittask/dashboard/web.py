"""The dashboard's Starlette app: one page, the JSON it polls, and the dead-letter actions.

    GET  /                          the page (its script polls /api/state every 2 s)
    GET  /api/state                 workers, queues, running chords, delayed, unroutable, task rates, recent failures
    GET  /api/tasks                 search: ?id= &task= &state= &worker= &args= &since= &until= &limit=
    GET  /api/task/{id}             one task's whole life (its events)
    GET  /api/stats/{task}          a task's runtime p50/p95/p99 and runs per minute, for its chart
    GET  /api/dlq/{queue}           the head of `<queue>.dlq` (?limit=, 50 by default), left in place
    POST /api/dlq/{queue}/replay    {"ids": [...]}, {"all": true} or {"filter": {"task", "exc_type", "reason"}}
    POST /api/dlq/{queue}/purge     {"confirm": "<queue>.dlq"}: delete every message of the DLQ
    GET  /api/active                what every worker child runs now (plane.py, over `app.control`)
    POST /api/revoke                {"ids": [...], "terminate": false}: `app.control.revoke`
    GET  /api/rate-limits           each task's declared and applied rate limit, and its measured rate

DLQ commands are `rabbittask.ops.dlq.DeadLetterQueue` (blocking pika), run in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from rabbittask.dashboard.auth import Sessions, TokenAuth
from rabbittask.dashboard.monitor import Monitor
from rabbittask.dashboard.plane import ControlViews, _Refused, read_json
from rabbittask.dashboard.tasks import SEARCH_LIMIT
from rabbittask.delays import unroutable_name
from rabbittask.errors import RabbitTaskError
from rabbittask.history.query import Query, parse_time
from rabbittask.ops.dlq import DeadLetter, DeadLetterQueue
from rabbittask.topology import history_stream_name

if TYPE_CHECKING:
    from rabbittask.app import App

STATIC = Path(__file__).parent / "static"
PAGE = (Path(__file__).parent / "page.html").read_text()
DLQ_LIMIT = 50
DLQ_MAX_LIMIT = 500
BODY_CHARS = 2000
SEARCH_MAX_LIMIT = 1000
DELAYED_SHOWN = 100


def create_app(app: App, token: str, monitor: Monitor | None = None) -> Starlette:
    """The ASGI app of the dashboard of `app`, guarded by `token`."""
    views = _Views(app, monitor or Monitor(app))
    plane = ControlViews(app, views.monitor)
    return Starlette(
        routes=[
            Route("/", views.page),
            Route("/api/state", views.state),
            Route("/api/tasks", views.tasks),
            Route("/api/task/{task_id}", views.task),
            Route("/api/stats/{task}", views.task_stats),
            Route("/api/dlq/{queue}", views.dlq_list),
            Route("/api/dlq/{queue}/replay", views.dlq_replay, methods=["POST"]),
            Route("/api/dlq/{queue}/purge", views.dlq_purge, methods=["POST"]),
            Route("/api/active", plane.active),
            Route("/api/revoke", plane.revoke, methods=["POST"]),
            Route("/api/rate-limits", plane.rate_limits),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        middleware=[Middleware(TokenAuth, token=token, sessions=Sessions())],
        exception_handlers={_Refused: _refused, RabbitTaskError: _broker_error},
        lifespan=views.lifespan,
    )


class _Views:
    """The handlers, over one app and its monitor."""

    def __init__(self, app: App, monitor: Monitor) -> None:
        self.app = app
        self.monitor = monitor

    @contextlib.asynccontextmanager
    async def lifespan(self, _: Starlette) -> AsyncIterator[None]:
        runner = asyncio.ensure_future(self.monitor.run())
        try:
            yield
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner

    async def page(self, request: Request) -> Response:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.monitor.history.started_at))
        kept = (
            f"History comes from the broker's {history_stream_name(self.app.settings.exchange)} stream "
            f"(kept {self.app.settings.history_max_age_s / 3600:g} h): it survives a restart of this dashboard."
            if self.app.settings.history
            else f"History starts when this dashboard started ({started}) and is kept in its memory only."
        )
        text = PAGE
        for key, value in {"app": self.app.name, "csrf": request.state.csrf or "", "history": kept}.items():
            text = text.replace("{{" + key + "}}", html.escape(value))
        return HTMLResponse(text, headers={"Cache-Control": "no-store"})

    async def state(self, request: Request) -> Response:
        queues, delayed, unroutable = await self.monitor.queues()
        history = self.monitor.history
        now = time.time()
        return JSONResponse(
            {
                "app": self.app.name,
                "exchange": self.app.settings.exchange,
                "started_at": history.started_at,
                "now": now,
                "events_error": self.monitor.error,
                "history_error": self.monitor.history_error,
                "workers": self.monitor.workers(),
                "workflows": self.monitor.workflows(),
                "queues": queues,
                "delayed": delayed,
                "unroutable": {"queue": unroutable_name(self.app.settings.exchange), "ready": unroutable},
                "rates": history.rates(),
                "totals": dict(history.totals),
                "failures": list(history.failures),
                "task_stats": history.stats.table(),
                "in_progress": history.index.in_progress(),
                "delayed_tasks": history.waiting.delayed_rows(now)[:DELAYED_SHOWN],
                "delayed_retries": len(history.waiting.delayed),
                "schedules": history.waiting.schedule_rows(self.app.schedules, now),
            }
        )

    async def tasks(self, request: Request) -> Response:
        params = request.query_params
        try:
            query = query_of(params, time.time())
            limit = min(SEARCH_MAX_LIMIT, max(1, int(params.get("limit", SEARCH_LIMIT))))
        except ValueError as e:
            raise _Refused(400, str(e)) from None
        index = self.monitor.history.index
        started = time.perf_counter()
        found, matched = index.search(query, limit)
        took_ms = round((time.perf_counter() - started) * 1000, 1)
        return JSONResponse({"tasks": found, "matched": matched, "indexed": len(index.records), "took_ms": took_ms})

    async def task(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        record = self.monitor.history.index.get(task_id)
        if record is None:
            raise _Refused(404, f"no task {task_id!r} in the history this dashboard holds")
        workflow = self.monitor.history.index.workflow(record["workflow"]) if record["workflow"] else None
        return JSONResponse({**record, "workflow_tasks": workflow})

    async def task_stats(self, request: Request) -> Response:
        task = request.path_params["task"]
        if task not in self.app.tasks:
            raise _Refused(404, f"{task!r} is not a task of app {self.app.name!r}")
        history = self.monitor.history
        minutes = history.minutes_shown()
        return JSONResponse({"task": task, "minutes": [m * 60 for m in minutes], **history.stats.series(task, minutes)})

    def _dead_letters(self, request: Request) -> DeadLetterQueue:
        queue = request.path_params["queue"]
        if queue not in self.app.queues:
            raise _Refused(404, f"{queue!r} is not a task queue of app {self.app.name!r}")
        return DeadLetterQueue(self.app.settings, queue)

    async def dlq_list(self, request: Request) -> Response:
        box = self._dead_letters(request)
        try:
            limit = min(DLQ_MAX_LIMIT, max(1, int(request.query_params.get("limit", DLQ_LIMIT))))
        except ValueError:
            raise _Refused(400, "limit must be a whole number") from None
        letters, total = await run_in_threadpool(box.peek, limit)
        return JSONResponse(
            {"queue": box.queue, "dlq": box.name, "total": total, "messages": [_letter(x) for x in letters]}
        )

    async def dlq_replay(self, request: Request) -> Response:
        box = self._dead_letters(request)
        body = await read_json(request)
        if "filter" in body:  # bulk: every dead letter that matches, e.g. the ValueErrors of one task
            wanted = letter_filter(body["filter"])
            letters, _ = await run_in_threadpool(box.peek, None)
            chosen = [x.id for x in letters if all(str(getattr(x, k)) == v for k, v in wanted.items())]
            result = await run_in_threadpool(box.replay, chosen) if chosen else None
            replayed = result.replayed if result else []
            return JSONResponse(
                {"matched": len(chosen), "replayed": replayed, "missing": result.missing if result else []}
            )
        ids = body.get("ids") or []
        valid = isinstance(ids, list) and all(isinstance(i, str) for i in ids)
        if not valid or (not ids and body.get("all") is not True):
            raise _Refused(400, 'say which messages to replay: {"ids": ["..."]} or {"all": true}')
        result = await run_in_threadpool(box.replay, ids)
        return JSONResponse({"replayed": result.replayed, "missing": result.missing})

    async def dlq_purge(self, request: Request) -> Response:
        box = self._dead_letters(request)
        if (await read_json(request)).get("confirm") != box.name:
            confirm = json.dumps({"confirm": box.name})
            raise _Refused(400, f"purging deletes every message of {box.name}: confirm with {confirm}")
        purged = await run_in_threadpool(box.purge)
        return JSONResponse({"purged": purged})


def query_of(params: Mapping[str, str], now: float) -> Query:
    """The search a request asks for; `ValueError` saying which parameter is wrong and how."""
    values = {
        k: (params.get(k) or "").strip() or None for k in ("id", "task", "state", "worker", "args", "since", "until")
    }
    since, until = values["since"], values["until"]
    return Query(
        task_id=values["id"],
        task=values["task"],
        state=values["state"],
        worker=values["worker"],
        args=values["args"],
        since=parse_time(since, now) if since else None,
        until=parse_time(until, now) if until else None,
    )


FILTER_FIELDS = ("task", "exc_type", "reason")


def letter_filter(value: Any) -> dict[str, str]:
    """A bulk replay's filter: `{"task": ..., "exc_type": ..., "reason": ...}`, at least one, exact matches."""
    if not isinstance(value, dict) or not value or not all(isinstance(v, str) and v for v in value.values()):
        raise _Refused(400, f"filter must name at least one of {', '.join(FILTER_FIELDS)} with a text value")
    unknown = set(value) - set(FILTER_FIELDS)
    if unknown:
        raise _Refused(400, f"unknown filter field(s) {', '.join(sorted(unknown))}: use {', '.join(FILTER_FIELDS)}")
    return value


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, _Refused)
    return JSONResponse({"error": exc.message}, exc.status)


async def _broker_error(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": str(exc)}, 502)


def _letter(letter: DeadLetter) -> dict[str, Any]:
    return {
        "id": letter.id,
        "task": letter.task,
        "reason": letter.reason,
        "exc_type": letter.exc_type,
        "exc_message": letter.exc_message,
        "traceback": letter.traceback,
        "attempts": letter.attempts,
        "age_s": letter.age_s(),
        "worker": letter.worker,
        "body": letter.body[:BODY_CHARS].decode("utf-8", "replace"),
    }
