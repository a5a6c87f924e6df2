"""Celery-format messages, fuzzed: what a worker reads from a Celery queue never crashes it and never runs wrong.

`decode_request` (rabbittask/celery/protocol.py) is a pure function and `translate` (celery/delivery.py) the
worker's first stage on a Celery queue. For any headers, body, content type and encoding: `decode_request`
returns a request or raises `CeleryMessageError` (a reason the run stage dead-letters with), nothing else;
`translate` never raises, keeps exactly one of request or error, and gives properties AMQP can carry, so the
dead letter or retry copy it leads to can be published.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from rabbittask.celery.delivery import translate
from rabbittask.celery.protocol import CeleryMessageError, decode_request
from rabbittask.message import H_ETA, H_EXPIRES, parse_time
from rabbittask.testing.stub import on_the_wire
from tests.fuzz.strategies import amqp_values, bodies, json_values, short_text, times
from tests.fuzz.test_decoder_fuzz import fuzz

CELERY_KEYS = ["task", "id", "retries", "eta", "expires", "timelimit", "root_id", "parent_id", "group",
               "compression", "lang", "shadow", "argsrepr", "kwargsrepr", "origin", "ignore_result"]  # fmt: skip
signatures = st.lists(st.one_of(st.dictionaries(short_text, json_values, max_size=4), json_values), max_size=3)
embeds = st.one_of(
    st.none(),
    json_values,
    st.fixed_dictionaries(
        {}, optional={k: st.one_of(signatures, json_values) for k in ["callbacks", "errbacks", "chain", "chord"]}
    ),
)
celery_bodies = st.one_of(
    bodies,
    st.builds(
        lambda a, k, e: json.dumps([a, k, e]).encode(),
        st.one_of(st.lists(json_values), json_values),
        st.one_of(st.dictionaries(short_text, json_values), json_values),
        embeds,
    ),  # fmt: skip
)
celery_headers = st.fixed_dictionaries(
    {"task": st.one_of(st.just("fuzz.sync"), amqp_values), "id": st.one_of(short_text, amqp_values)},
    optional={k: st.one_of(amqp_values, times, st.integers(-(2**63), 2**63 - 1)) for k in CELERY_KEYS[2:]},
)
content_types = st.sampled_from(["application/json", "application/x-python-serialize", "text/plain", "", None])
encodings = st.sampled_from(["utf-8", "UTF-8", "binary", "gzip", "", None])


@fuzz
@given(headers=st.one_of(celery_headers, st.none()), body=celery_bodies, ctype=content_types, enc=encodings)
def test_decode_request_returns_a_request_or_says_why_not(
    headers: dict[str, Any] | None, body: bytes, ctype: str | None, enc: str | None
) -> None:
    try:
        request = decode_request(headers, body, ctype, enc)
    except CeleryMessageError as e:
        assert str(e)  # the reason a person reads in the dead letter's rt-exc-message
        return
    assert request.task and request.id
    assert isinstance(request.args, list) and isinstance(request.kwargs, dict) and request.retries >= 0


@fuzz
@given(headers=celery_headers, body=celery_bodies, ctype=content_types, enc=encodings, key=short_text)
def test_translate_never_raises_and_keeps_a_request_or_a_reason(
    headers: dict[str, Any], body: bytes, ctype: str | None, enc: str | None, key: str
) -> None:
    props = Basic.Properties(content_type=ctype, content_encoding=enc, headers=headers, delivery_mode=2)
    try:
        on_the_wire(props, len(body))
    except (TypeError, ValueError, OverflowError, UnicodeEncodeError):
        return  # AMQP cannot carry it: no broker delivers it
    delivery = Basic.Deliver("ctag", 1, False, "", key)
    translated = translate(_message(delivery, props, body), ["celery"])
    assert (translated.request is None) != (translated.error == "")
    on_the_wire(translated.header.properties, len(body))  # a dead letter or a retry of it can be published
    out = translated.header.properties.headers or {}
    if translated.request is not None:
        for name in (H_ETA, H_EXPIRES):
            if name in out and name not in headers:
                assert parse_time(out[name]) is not None  # a time the worker's own stages read


def _message(delivery: Basic.Deliver, props: Basic.Properties, body: bytes) -> Any:
    from aiormq.abc import DeliveredMessage

    return DeliveredMessage(delivery, ContentHeader(0, len(body), props), body, None)  # type: ignore[arg-type]
