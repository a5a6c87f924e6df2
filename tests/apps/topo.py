"""Test app for topology as code: its own exchange and queues, all named from RT_TEST_PREFIX."""

from __future__ import annotations

import os
import sys
import types
from typing import Any

import pytest

from rabbittask import App


def make_app(prefix: str, broker_url: str | None = None, **work_options: Any) -> App:
    """A quorum queue `<prefix>.work` (options from `work_options`) and a classic priority queue `<prefix>.prio`."""
    app = App("topo-tests", broker_url=broker_url, exchange=prefix)

    @app.task(queue=f"{prefix}.work", name="topo.work", **work_options)
    def work(n: int) -> int:
        return n

    @app.task(
        queue=f"{prefix}.prio",
        name="topo.prio",
        queue_type="classic",
        max_priority=5,
        max_length=1000,
        overflow="reject-publish-dlx",
    )
    def prio(n: int) -> int:
        return n

    return app


def importable(app: App, name: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Make `app` loadable by the CLI as `-A <name>:app` for the duration of a test; returns that spec."""
    module = types.ModuleType(name)
    module.app = app  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, name, module)
    return f"{name}:app"


app = make_app(os.environ.get("RT_TEST_PREFIX", "topo"))
