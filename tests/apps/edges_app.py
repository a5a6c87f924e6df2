"""Test app of the edge tests: one task on queue RT_TEST_PREFIX, exchange RT_TEST_EXCHANGE (a ladder of its own)."""

from __future__ import annotations

import os

from rabbittask import App

app = App("edges", exchange=os.environ.get("RT_TEST_EXCHANGE", "rabbittask"))


@app.task(queue=os.environ.get("RT_TEST_PREFIX", "edges"), name="edges.noop")
def noop(tag: str) -> str:
    return tag
