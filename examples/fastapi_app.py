"""FastAPI (ASGI): endpoints that `await task.adelay()` and `await task.acall()`.

`uvicorn examples.fastapi_app:api`. Every request of the server's event loop shares one publisher
connection and one RPC connection (rabbittask keeps them per event loop); the lifespan closes
them when the server stops.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from examples.webtasks import add, app, shout

log = logging.getLogger("uvicorn.error")


@asynccontextmanager
async def lifespan(api: FastAPI) -> AsyncIterator[None]:
    yield  # connections open on the first request that needs them
    await app.aclose()  # this event loop's publisher and RPC connections
    log.info("rabbittask connections closed")


api = FastAPI(lifespan=lifespan)


@api.post("/add")
async def send_add(x: int, y: int) -> dict[str, str]:
    """Send the task; answer once the broker confirmed it."""
    handle = await add.adelay(x, y)
    return {"task_id": handle.id}


@api.get("/add")
async def run_add(x: int, y: int) -> dict[str, int]:
    """Run the task on a worker and answer with its result."""
    return {"result": await add.acall(x, y, timeout=30)}


@api.get("/shout")
async def run_shout(text: str) -> dict[str, str]:
    return {"result": await shout.acall(text)}
