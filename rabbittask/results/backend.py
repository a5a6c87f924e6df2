"""The result-backend plugin interface and the registry that picks a plugin by URL scheme.

A backend keeps one opaque record per task id (the JSON bytes of `results/record.py`) until it
expires. Plugins subclass `ResultBackend` and declare themselves in the entry-point group
`rabbittask.backends` under the URL scheme they serve, e.g. in their pyproject.toml:

    [project.entry-points."rabbittask.backends"]
    redis = "rabbittask.results.backends.redis:RedisBackend"

`App(result_backend="redis://...")` then loads `RedisBackend("redis://...")` on first use. A plugin
must implement `store`, `fetch` and `forget`; `wait` and the async twins have working defaults
(polling, and the sync method in a thread) that a plugin overrides when it can do better. A base
class rather than a Protocol, for exactly those defaults. docs/results.md walks through a plugin.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from rabbittask.errors import ConfigError
from rabbittask.settings import mask_url

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

ENTRY_POINT_GROUP = "rabbittask.backends"
POLL_FIRST_S = 0.005
POLL_MAX_S = 0.25


class ResultBackend:
    """Stores task result records by task id, with expiry. Methods raise `ResultBackendError` on failure."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {mask_url(self.url)}>"

    # -- what a plugin implements ----------------------------------------------------------------------

    def store(self, task_id: str, record: bytes, expires_s: float) -> None:
        """Keep `record` for `task_id` for `expires_s` seconds, replacing an earlier one."""
        raise NotImplementedError

    def fetch(self, task_id: str) -> bytes | None:
        """The record of `task_id`, or None when there is none (not finished, expired, or forgotten)."""
        raise NotImplementedError

    def forget(self, task_id: str) -> None:
        """Delete the record of `task_id` (no error when there is none)."""
        raise NotImplementedError

    # -- defaults a plugin may override ----------------------------------------------------------------

    def wait(self, task_id: str, timeout_s: float | None) -> bytes | None:
        """Wait until `task_id` has a record and return it; None after `timeout_s` (None: no limit)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        pause_s = POLL_FIRST_S
        while (record := self.fetch(task_id)) is None:
            left_s = pause_s if deadline is None else min(pause_s, deadline - time.monotonic())
            if left_s <= 0:
                return None
            time.sleep(left_s)
            pause_s = min(pause_s * 2, POLL_MAX_S)
        return record

    async def astore(self, task_id: str, record: bytes, expires_s: float) -> None:
        """Async twin of `store` (default: `store` in a thread)."""
        await asyncio.to_thread(self.store, task_id, record, expires_s)

    async def afetch(self, task_id: str) -> bytes | None:
        """Async twin of `fetch` (default: `fetch` in a thread)."""
        return await asyncio.to_thread(self.fetch, task_id)

    async def aforget(self, task_id: str) -> None:
        """Async twin of `forget` (default: `forget` in a thread)."""
        await asyncio.to_thread(self.forget, task_id)

    async def await_(self, task_id: str, timeout_s: float | None) -> bytes | None:
        """Async twin of `wait` (default: polls `afetch`)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        pause_s = POLL_FIRST_S
        while (record := await self.afetch(task_id)) is None:
            left_s = pause_s if deadline is None else min(pause_s, deadline - time.monotonic())
            if left_s <= 0:
                return None
            await asyncio.sleep(left_s)
            pause_s = min(pause_s * 2, POLL_MAX_S)
        return record

    def close(self) -> None:
        """Release the connections this thread or process opened."""

    async def aclose(self) -> None:
        """Release the connections of the running event loop."""


def on_loop_shutdown(close: Callable[[], Awaitable[None]]) -> None:
    """Await `close()` when the running event loop shuts down its async generators (`asyncio.run` does).

    For plugins whose async clients belong to one event loop: they close with it instead of being
    collected open.
    """

    async def guard() -> AsyncIterator[None]:
        try:
            yield
        finally:
            _guards.discard(gen)
            await close()

    gen = guard()
    _guards.add(gen)  # held strongly: a collected guard would run its `finally` at once
    asyncio.ensure_future(gen.__anext__())


_guards: set[AsyncIterator[None]] = set()


def backend_entry_points() -> dict[str, EntryPoint]:
    """Installed backend plugins by URL scheme."""
    from importlib.metadata import entry_points  # only when an app has a result backend

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_backend(url: str) -> ResultBackend:
    """The backend for `url`, chosen by its scheme among the installed plugins."""
    scheme = urlsplit(url).scheme
    found = backend_entry_points()
    ep = found.get(scheme)
    if ep is None:
        known = ", ".join(sorted(found)) or "none"
        raise ConfigError(
            f"no result backend for URL scheme {scheme!r} (result_backend={mask_url(url)!r}); "
            f"installed backends: {known}. A plugin declares its scheme in the entry-point group {ENTRY_POINT_GROUP!r}"
        )
    try:
        cls = ep.load()
    except ImportError as e:
        dist = ep.dist.name if ep.dist is not None else "its package"
        extra = (
            f"pip install 'rabbittask[{ep.module.rsplit('.', 1)[-1]}]'" if dist == "rabbittask" else f"reinstall {dist}"
        )
        raise ConfigError(f"result backend {scheme!r} ({ep.value}) cannot be imported: {e}; {extra}") from None
    if not (isinstance(cls, type) and issubclass(cls, ResultBackend)):
        raise ConfigError(f"result backend {scheme!r} ({ep.value}) is not a subclass of ResultBackend")
    return cls(url)
