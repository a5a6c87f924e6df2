"""Fuzz fixtures: one judge (a stub broker and its app) per module; `FUZZ_EXAMPLES` sets the cases per test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.fuzz.harness import Judge

# `make test` runs a few hundred cases; `make fuzz` sets FUZZ_EXAMPLES for ≥ 100,000 in all.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))


@pytest.fixture(scope="module")
def judge() -> Iterator[Judge]:
    j = Judge()
    yield j
    j.close()
