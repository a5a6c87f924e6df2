"""The dashboard's views fed by the control plane: the tasks running now, revoking them, rate limits.

Each request asks the workers through `app.control` (control/client.py), the same broadcast as
`rabbittask inspect`: every live child answers within `INSPECT_TIMEOUT_S`, and a child alive a
moment ago that stays silent is listed as missing. Answers are shared for `FRESH_S` (several open
pages, or both views of one, cost one broadcast), and one broadcast of a kind runs at a time.
A revoke is `app.control.revoke(ids, terminate=...)`: confirmed by the broker before the answer,
kept for `revoke_retention_s`. Being POSTs, revokes pass the token and CSRF checks of auth.py like
the dead-letter actions.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

if TYPE_CHECKING:
    from rabbittask.app import App
    from rabbittask.control.client import Replies
    from rabbittask.dashboard.monitor import Monitor

INSPECT_TIMEOUT_S = 1.0
FRESH_S = 1.5
MAX_REVOKE = 1000  # ids in one request
UNLIMITED = "unlimited"


class _Refused(Exception):
    """A request the dashboard answers with an error status and a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def read_json(request: Request) -> dict[str, Any]:
    """The request's JSON object; `_Refused` (400) saying what is wrong with it."""
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        raise _Refused(400, "the request body must be JSON") from None
    if not isinstance(body, dict):
        raise _Refused(400, "the request body must be a JSON object")
    return body


class ControlViews:
    """Handlers over one app's control plane and the monitor's history (for measured rates)."""

    def __init__(self, app: App, monitor: Monitor) -> None:
        self.app = app
        self.monitor = monitor
        self._answers: dict[str, tuple[float, Replies]] = {}
        self._locks = {"active": asyncio.Lock(), "stats": asyncio.Lock()}

    async def _ask(self, command: str) -> Replies:
        """The children's answers to `command`, at most `FRESH_S` old."""
        async with self._locks[command]:
            cached = self._answers.get(command)
            if cached is not None and time.monotonic() - cached[0] < FRESH_S:
                return cached[1]
            replies = await self.app.control.abroadcast(command, timeout_s=INSPECT_TIMEOUT_S)
            self._answers[command] = (time.monotonic(), replies)
            return replies

    async def active(self, request: Request) -> Response:
        """What every worker child runs now: `inspect active`, one row per run, oldest first."""
        replies = await self._ask("active")
        rows = [
            {**run, "child": child, "worker": replies.supervisors.get(child)}
            for child, runs in replies.replies.items()
            if isinstance(runs, list)
            for run in runs
            if isinstance(run, dict)
        ]
        rows.sort(key=lambda r: float(r.get("started_at") or 0.0))
        return JSONResponse(
            {
                "active": rows,
                "children": sorted(replies.replies),
                "missing": replies.missing,
                "errors": replies.errors,
            }
        )

    async def revoke(self, request: Request) -> Response:
        """`{"ids": [...], "terminate": false}`: revoke these tasks on every worker (and stop them if running)."""
        body = await read_json(request)
        ids, terminate = body.get("ids"), body.get("terminate", False)
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i.strip() for i in ids):
            raise _Refused(400, 'say which tasks to revoke: {"ids": ["<task id>", ...], "terminate": false}')
        if len(ids) > MAX_REVOKE:
            raise _Refused(400, f"revoke at most {MAX_REVOKE} tasks in one request, not {len(ids)}")
        if not isinstance(terminate, bool):
            raise _Refused(400, f"terminate must be true or false, not {terminate!r}")
        await self.app.control.arevoke(ids, terminate=terminate)
        self._answers.pop("active", None)  # the next look shows the runs as they are now
        return JSONResponse({"revoked": ids, "terminate": terminate})

    async def rate_limits(self, request: Request) -> Response:
        """Per task: the declared limit, the limit the live children apply (an override when it differs), the
        measured rate (runs started per second over the last minute)."""
        replies = await self._ask("stats")
        answered = {c: r for c, r in replies.replies.items() if isinstance(r, dict)}
        now = time.time()
        waiting = self.monitor.history.waiting
        rows = []
        for name in sorted(self.app.tasks):
            task = self.app.tasks[name]
            declared = str(task.rate_limit) if task.rate_limit is not None else None
            applied = sorted({str((r.get("rate_limits") or {}).get(name, UNLIMITED)) for r in answered.values()})
            in_force = applied[0] if len(applied) == 1 else (" / ".join(applied) if applied else None)
            rate, counted = waiting.run_rate(name, now)
            rows.append(
                {
                    "task": name,
                    "declared": declared,
                    "in_force": in_force,
                    "override": in_force is not None and in_force != (declared or UNLIMITED),
                    "measured_per_s": rate,
                    "counted": counted,
                }
            )
        return JSONResponse({"tasks": rows, "children": sorted(answered), "missing": replies.missing})
