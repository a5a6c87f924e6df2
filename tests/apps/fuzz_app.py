"""Test app of the real-worker fuzz test: the fuzz harness's tasks on queue RT_TEST_PREFIX, exchange RT_TEST_EXCHANGE.

Each run appends `<task> <message id>` to the ledger file `RT_TEST_LEDGER/<prefix>`.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.fuzz.harness import make_app

_prefix = os.environ.get("RT_TEST_PREFIX", "fuzz")
_ledger = Path(os.environ.get("RT_TEST_LEDGER", "/tmp/rt-ledger")) / _prefix


def _record(name: str, message_id: str) -> None:
    with open(_ledger, "a") as f:
        f.write(f"{name} {message_id}\n")


app, _ = make_app(_prefix, os.environ.get("RT_TEST_EXCHANGE", "rabbittask"), _record)
