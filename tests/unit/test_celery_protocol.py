"""Celery protocol 2 as pure functions: what real Celery writes is read, what cannot run here is refused clearly."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from celery import Celery, chain, chord
from kombu.serialization import dumps

from rabbittask import TaskError
from rabbittask.celery.protocol import (
    CeleryMessageError,
    decode_request,
    encode_request,
    exception_meta,
    is_celery,
    read_result,
    result_meta,
    to_record,
)
from rabbittask.results.record import decode_result


@pytest.fixture
def celery() -> Celery:
    app = Celery("proj", broker="memory://", set_as_current=False)
    app.conf.task_serializer = "json"

    @app.task(name="proj.tasks.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    return app


def celery_message(app: Celery, serializer: str = "json", **options: object) -> tuple[dict, bytes, str, str]:
    """Headers, body, content type and encoding of the message Celery's own code builds."""
    msg = app.amqp.as_task_v2("the-id", "proj.tasks.add", args=(1, 2), kwargs={"z": 3}, **options)
    content_type, encoding, body = dumps(msg.body, serializer=serializer)
    return msg.headers, body if isinstance(body, bytes) else body.encode(), content_type, encoding


def test_a_message_built_by_celery_is_read_with_its_headers(celery: Celery) -> None:
    eta = datetime.now(UTC) + timedelta(seconds=30)
    headers, body, ctype, enc = celery_message(celery, eta=eta, expires=60, retries=2, group_id="g1", time_limit=9)
    assert is_celery(headers)
    request = decode_request(headers, body, ctype, enc)
    assert (request.task, request.id, request.args, request.kwargs) == ("proj.tasks.add", "the-id", [1, 2], {"z": 3})
    assert request.retries == 2 and request.group == "g1" and request.root_id == "the-id"
    assert request.eta == pytest.approx(eta.timestamp(), abs=0.01)
    assert request.expires is not None and request.expires > eta.timestamp()
    assert request.time_limit_s == 9


def test_a_pickled_message_is_refused_before_its_body_is_read(celery: Celery) -> None:
    headers, body, ctype, enc = celery_message(celery, serializer="pickle")
    with pytest.raises(CeleryMessageError) as info:
        decode_request(headers, body, ctype, enc)
    assert "'application/x-python-serialize' is not accepted" in str(info.value)
    assert "task_serializer='json'" in str(info.value)


def test_a_chord_member_is_refused_with_what_to_do(celery: Celery) -> None:
    add = celery.tasks["proj.tasks.add"]
    headers, body, ctype, enc = celery_message(celery, chord=chord([add.s(1, 1)], add.s(2)))
    with pytest.raises(CeleryMessageError, match="part of a Celery chord"):
        decode_request(headers, body, ctype, enc)


def test_a_chain_step_that_is_a_group_is_refused(celery: Celery) -> None:
    add = celery.tasks["proj.tasks.add"]
    group_sig = dict(chain(add.s(1, 1), add.s(2)))  # a canvas, not a plain task
    headers, body, ctype, enc = celery_message(celery, chain=[group_sig])
    with pytest.raises(CeleryMessageError, match="'chain'.*not supported"):
        decode_request(headers, body, ctype, enc)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"args": []}', "[args, kwargs, embed]"),
        (b"[1, {}, {}]", "args (array)"),
        (b'[[], {}, {"chain": "x"}]', "list of signatures"),
    ],
)
def test_malformed_bodies_are_refused_saying_what_is_wrong(body: bytes, says: str) -> None:
    with pytest.raises(CeleryMessageError, match=re.escape(says)):
        decode_request({"task": "t", "id": "i"}, body, "application/json", "utf-8")


def test_bad_headers_are_refused() -> None:
    ok = b"[[], {}, {}]"
    with pytest.raises(CeleryMessageError, match="'eta' is not an ISO 8601 time"):
        decode_request({"task": "t", "id": "i", "eta": "tomorrow"}, ok, "application/json", "utf-8")
    with pytest.raises(CeleryMessageError, match="'retries' must be a whole number"):
        decode_request({"task": "t", "id": "i", "retries": -1}, ok, "application/json", "utf-8")
    with pytest.raises(CeleryMessageError, match="compression"):
        decode_request({"task": "t", "id": "i", "compression": "application/x-gzip"}, ok, "application/json", "utf-8")


def test_what_rabbittask_encodes_is_what_celery_would_read(celery: Celery) -> None:
    headers, body = encode_request("proj.tasks.add", "id-1", [1, 2], {"z": 3}, eta=1_900_000_000.0)
    ours = decode_request(headers, body, "application/json", "utf-8")
    theirs = celery.amqp.as_task_v2("id-1", "proj.tasks.add", args=(1, 2), kwargs={"z": 3}).headers
    assert set(theirs) - set(headers) <= {"replaced_task_nesting", "stamped_headers", "stamps"}
    assert ours.eta == 1_900_000_000.0 and json.loads(body)[2]["chord"] is None


def test_result_records_read_back_as_values_and_errors() -> None:
    ok = result_meta("i", "SUCCESS", {"n": 1}, now_s=0)
    assert read_result(ok) == ("SUCCESS", {"n": 1})
    assert decode_result(to_record(ok) or b"") == {"n": 1}
    failed = result_meta("i", "FAILURE", exception_meta("KeyError", "k"), "Traceback ...", now_s=0)
    with pytest.raises(KeyError):
        read_result(failed)
    with pytest.raises(TaskError) as info:
        decode_result(to_record(failed) or b"")
    assert info.value.type_name == "KeyError" and isinstance(info.value, KeyError)
    assert exception_meta("MyError", "x")["exc_module"] is None  # Celery builds a class of that name
    assert to_record(result_meta("i", "RETRY", None, now_s=0)) is None  # not final: no result yet


def test_a_celery_message_on_a_queue_without_accept_celery_says_what_to_declare() -> None:
    from aiormq.abc import DeliveredMessage
    from pamqp.commands import Basic
    from pamqp.header import ContentHeader

    from rabbittask import App
    from rabbittask.worker.execute import prepare
    from rabbittask.worker.outcome import Outcome, Reason

    app = App("plain")

    @app.task(name="proj.tasks.add")
    def add(x: int, y: int) -> int:
        return x + y

    headers, body = encode_request("proj.tasks.add", "id-1", [1, 2], {})
    props = Basic.Properties(content_type="application/json", headers=headers, correlation_id="id-1")
    message = DeliveredMessage(
        Basic.Deliver("ct", 1, False, "", "default"), ContentHeader(0, len(body), props), body, None
    )  # type: ignore[arg-type]
    outcome = prepare(app, message)
    assert isinstance(outcome, Outcome) and outcome.reason is Reason.MALFORMED
    assert outcome.exc_message == (
        "a Celery message (task 'proj.tasks.add') on a queue whose tasks do not accept Celery messages: declare them "
        "with accept_celery=True (or App(..., accept_celery=True))"
    )
