"""Coverage-guided fuzz of what a worker decodes (atheris, libFuzzer): `make fuzz` runs it.

    python -m tests.fuzz.atheris_decoder -runs=100000 [-seed=N] [corpus dir]

Each input's bytes are split by atheris' `FuzzedDataProvider` into a body, a content type, a task name,
an id and a header table (names from every `rt-*`/`x-*` header, values of every AMQP type) and judged
by `Judge.check` (harness.py): settled, never raising, the next good message runs. A broken invariant
is an uncaught exception: atheris stops and writes the input to `crash-*`. Every 1,000 cases the counts
go to the JSON file `FUZZ_REPORT` names (libFuzzer exits without Python's exit handlers).
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import atheris

with atheris.instrument_imports(include=["rabbittask"]):
    from pamqp.commands import Basic

    from rabbittask.testing.stub import on_the_wire
    from tests.fuzz.harness import GOOD_BODY, Judge
    from tests.fuzz.strategies import HEADERS

CONTENT_TYPES = ["application/json", "application/json; charset=utf-8", "", "text/plain", "application/x-python"]
TASKS = ["fuzz.sync", "fuzz.async", "", "nope"]
judge: Judge | None = None
stats = {"cases": 0, "skipped_unencodable": 0, "ran": 0, "dead_lettered": 0, "parked": 0, "crashes": 0}


def value(fdp: atheris.FuzzedDataProvider, depth: int = 0) -> Any:
    """One AMQP field value of a type the input picks (tables and arrays nest up to 3 deep)."""
    kind = fdp.ConsumeIntInRange(0, 11 if depth < 3 else 9)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return fdp.ConsumeIntInRange(-(2**63), 2**63 - 1)
    if kind == 3:
        return fdp.ConsumeRegularFloat() if fdp.ConsumeBool() else fdp.ConsumeFloat()
    if kind == 4:
        return Decimal(fdp.ConsumeIntInRange(-(10**6), 10**6)) / 100
    if kind == 5:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 60))
    if kind == 6:
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 60))
    if kind == 7:
        return datetime.fromtimestamp(fdp.ConsumeIntInRange(0, 7_000_000_000), UTC).replace(tzinfo=None)
    if kind == 8:
        return str(fdp.ConsumeIntInRange(-(2**40), 2**40))
    if kind == 9:
        return fdp.PickValueInList(["not-a-date", "2026-12-07T10:00:00", "0001-01-01T00:00:00+01:00", "9999-12-31"])
    if kind == 10:
        return [value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 6))]
    return {fdp.ConsumeUnicodeNoSurrogates(8) or "k": value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 6))}


def one_input(data: bytes) -> None:
    assert judge is not None
    fdp = atheris.FuzzedDataProvider(data)
    headers = {}
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        name = fdp.PickValueInList(HEADERS) if fdp.ConsumeBool() else fdp.ConsumeUnicodeNoSurrogates(12) or "h"
        headers[name] = value(fdp)
    props = Basic.Properties(
        content_type=fdp.PickValueInList(CONTENT_TYPES),
        message_id=fdp.ConsumeUnicodeNoSurrogates(20) if fdp.ConsumeBool() else None,
        message_type=fdp.PickValueInList(TASKS),
        priority=fdp.ConsumeIntInRange(0, 255) if fdp.ConsumeBool() else None,
        correlation_id=fdp.ConsumeUnicodeNoSurrogates(20) if fdp.ConsumeBool() else None,
        reply_to=fdp.ConsumeUnicodeNoSurrogates(20) if fdp.ConsumeBool() else None,
        headers=headers or None,
    )
    # Raw bytes alone almost never make a valid task: a third of the inputs fuzz inside a valid envelope,
    # a third only the properties and headers, so the paths of a run are covered too.
    mode, rest = fdp.ConsumeIntInRange(0, 2), fdp.ConsumeBytes(fdp.remaining_bytes())
    body = rest if mode == 0 else b'{"v":1,"args":[' + rest + b'],"kwargs":{}}' if mode == 1 else GOOD_BODY
    try:
        on_the_wire(props, len(body))
    except (TypeError, ValueError, OverflowError, UnicodeEncodeError):
        stats["skipped_unencodable"] += 1  # AMQP cannot carry it: a client could not publish it either
        return
    stats["cases"] += 1
    try:
        verdict = judge.check(body, props)
    except BaseException:
        stats["crashes"] += 1
        report()
        raise
    stats["ran" if verdict.ran else "parked" if verdict.scheduled else "dead_lettered"] += 1
    if stats["cases"] % 1000 == 0:
        report()  # libFuzzer ends the process without Python's exit handlers: report as it goes


def report() -> None:
    line = json.dumps(stats)
    if path := os.environ.get("FUZZ_REPORT"):
        with open(path, "w") as f:
            f.write(line + "\n")
    else:
        print(f"fuzz summary: {line}", file=sys.stderr)


def main() -> None:
    global judge
    judge = Judge()
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
