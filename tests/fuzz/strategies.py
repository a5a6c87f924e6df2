"""Hypothesis strategies for what a producer can put on the wire: bodies, AMQP field values, properties."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import strategies as st
from pamqp.commands import Basic

from rabbittask import message as m

TASK_NAMES = ["fuzz.sync", "fuzz.async"]
# Every header the worker reads or writes, and the broker's own.
HEADERS = sorted(
    {
        m.H_ATTEMPT, m.H_REASON, m.H_EXC_TYPE, m.H_EXC_MESSAGE, m.H_TRACEBACK, m.H_WORKER, m.H_FAILED_AT,
        m.H_QUEUE, m.H_FIRST_SEEN, m.H_EXPIRES, m.H_ETA, m.H_DELIVERY_COUNT, m.H_SIGNATURE, m.H_RESENT,
        m.H_SCHEDULE, m.H_SLOT, m.H_FIRED_AT, "traceparent", "tracestate", *m.DEATH_HEADERS,
    }
)  # fmt: skip

short_text = st.text(max_size=40)
# Values an AMQP field table carries (pamqp encodes each by its Python type).
amqp_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.integers(-(2**31), 2**31 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.decimals(allow_nan=False, allow_infinity=False, places=2, min_value=-(10**6), max_value=10**6)
    | short_text
    | st.binary(max_size=40)
    | st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1)).map(
        lambda d: d.replace(microsecond=0)
    )
)
amqp_values = st.recursive(
    amqp_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(min_size=1, max_size=12), inner, max_size=5),
    max_leaves=20,
)
# Times as producers get them right and wrong: ISO text, epoch numbers and epoch text, junk.
times = (
    st.floats(-1e12, 1e12).map(lambda t: datetime.fromtimestamp(0, UTC).timestamp() + t)
    | st.integers(-(10**12), 10**12)
    | st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat())
    | st.integers(0, 2**33).map(str)
    | st.sampled_from(["not-a-date", "", "2026-13-45", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
    | amqp_values
)
header_tables = st.dictionaries(
    st.sampled_from(HEADERS) | st.text(min_size=1, max_size=20),
    st.one_of(times, amqp_values, st.integers(-5, 30)),
    max_size=8,
)

json_scalars = (
    st.none() | st.booleans() | st.integers() | st.integers(-(10**400), 10**400) | st.floats() | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=15,
)


def _dump(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


def _nested(depth: int) -> bytes:
    return b'{"v":1,"args":[' + b"[" * depth + b"]" * depth + b'],"kwargs":{}}'


bodies = st.one_of(
    st.binary(max_size=200),  # any bytes, invalid UTF-8 included
    st.builds(lambda a, k: _dump({"v": 1, "args": a, "kwargs": k}), st.lists(json_values, max_size=4),
              st.dictionaries(st.text(max_size=6), json_values, max_size=4)),
    st.builds(lambda a: _dump({"v": 1, "args": [a]}), st.integers(-(10**6), 10**6)),  # valid for both tasks
    json_values.map(_dump),
    st.integers(1, 100_000).map(_nested),  # deep nesting
    st.sampled_from([
        b'{"v":1,"args":[1],"args":["dup"],"kwargs":{}}',  # duplicate keys
        b'{"v":1,"args":[1e999999],"kwargs":{}}',  # a number no float holds
        b'{"v":1,"args":[' + b"9" * 5000 + b"],\"kwargs\":{}}",  # an integer of 5,000 digits
        b'{"v":1,"args":["\\ud800"],"kwargs":{}}',  # a lone surrogate
        b'\xef\xbb\xbf{"v":1,"args":[1],"kwargs":{}}',  # a BOM
        b'{"v":1,"args":[1],"kwargs":{}}\x00',
        b'{"v":true,"args":[1],"kwargs":{}}',
        b'{"v":1.0,"args":[1],"kwargs":{}}',
        b'{"v":1,"args":[1],"kwargs":{"a":2}}',
    ]),
)  # fmt: skip

content_types = (
    st.sampled_from([m.CONTENT_TYPE, "application/json; charset=utf-8", None, "", "text/plain"]) | short_text
)


@st.composite
def properties(draw: st.DrawFn) -> Basic.Properties:
    """Basic properties of any legal shape (each of the right AMQP type: a wrong type cannot be encoded)."""
    maybe = lambda s: draw(st.none() | s)  # noqa: E731
    return Basic.Properties(
        content_type=draw(content_types),
        content_encoding=maybe(short_text),
        headers=draw(st.none() | header_tables),
        delivery_mode=maybe(st.sampled_from([1, 2])),
        priority=maybe(st.integers(0, 255)),
        correlation_id=maybe(short_text),
        reply_to=maybe(short_text),
        message_id=draw(st.none() | short_text | st.uuids().map(str)),
        timestamp=maybe(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1))),
        message_type=draw(st.none() | st.sampled_from(TASK_NAMES) | short_text),
        user_id=None,  # the broker refuses a user_id other than the connection's own
        app_id=maybe(short_text),
    )


def huge_table(width: int, depth: int) -> dict[str, Any]:
    """A header table `width` wide at each of `depth` levels (about width**depth entries: keep it small)."""
    if depth == 0:
        return {f"k{i}": i for i in range(width)}
    return {f"k{i}": huge_table(width, depth - 1) for i in range(width)}
