"""The envelope: what goes on the wire and what the worker accepts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rabbittask.amqp.properties import pika_properties, properties
from rabbittask.errors import PayloadError
from rabbittask.message import Outgoing, decode_body, encode_body

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@given(st.lists(json_values, max_size=5), st.dictionaries(st.text(min_size=1, max_size=10), json_values, max_size=5))
def test_any_json_arguments_survive_the_round_trip(args: list[object], kwargs: dict[str, object]) -> None:
    body = decode_body(encode_body(args, kwargs), "application/json")
    assert body.args == args and body.kwargs == kwargs


@pytest.mark.parametrize(
    ("raw", "content_type", "error"),
    [
        (b"{}", "application/x-python-serialize", "content type 'application/x-python-serialize' is not accepted"),
        (b"{}", None, "content type None is not accepted"),
        (b"{nope", "application/json", "body is not valid JSON"),
        (b"[1, 2]", "application/json", "body must be a JSON object, got list"),
        (b'{"v": 2, "args": []}', "application/json", "protocol version 2 is not supported"),
        (b'{"v": 1, "args": {}, "kwargs": {}}', "application/json", "body needs 'args' as a JSON array"),
    ],
)
def test_bad_bodies_are_refused_with_the_reason(raw: bytes, content_type: str | None, error: str) -> None:
    with pytest.raises(PayloadError, match=error.replace("(", r"\(").replace(")", r"\)")):
        decode_body(raw, content_type)


def test_values_json_cannot_carry_are_refused_when_encoding() -> None:
    with pytest.raises(PayloadError, match="arguments cannot be sent as JSON"):
        encode_body([object()], {})


@pytest.mark.parametrize(
    "msg",
    [
        Outgoing("q", b"{}", "id-1", "emails.send"),
        Outgoing("q", b"{}", "id-2", "t", priority=5, headers={"rt-eta": "x"}, reply_to="r", correlation_id="id-2"),
        Outgoing("s", b"{}", "", "rabbittask.beat.state", exchange="", expiration_ms=1500),
    ],
)
def test_aiormq_and_pika_publish_a_message_with_the_same_properties(msg: Outgoing) -> None:
    aio, blocking = properties(msg), pika_properties(msg)
    same = ("content_type", "delivery_mode", "message_id", "correlation_id", "priority", "headers", "reply_to")
    assert {f: getattr(aio, f) for f in same} == {f: getattr(blocking, f) for f in same}
    assert (aio.message_type, aio.expiration) == (blocking.type, blocking.expiration)
    assert aio.message_type == msg.task_name and aio.delivery_mode == 2
    assert aio.message_id == (msg.message_id or None)
