"""The exception tree: where a refusal sits, and what callers that catch publish errors still catch."""

from __future__ import annotations

import aiormq.exceptions
import pika.exceptions
import pytest

from rabbittask import (
    AccessRefused,
    BrokerError,
    ConnectionLost,
    PayloadError,
    PublishAccessRefused,
    PublishConnectionError,
    PublishError,
    RabbitTaskError,
    ResultNotSerialisable,
    Settings,
)
from rabbittask.amqp.blocking import connect_error
from rabbittask.amqp.connect import access_refused
from rabbittask.results.record import encode_success

SETTINGS = Settings(broker_url="amqp://worker:secret@localhost:5672/")


def test_a_refusal_while_consuming_is_an_access_refused_but_no_publish_error() -> None:
    error = access_refused(SETTINGS, aiormq.exceptions.ChannelAccessRefused("403"), "declare or consume q")
    assert type(error) is AccessRefused
    assert isinstance(error, BrokerError) and isinstance(error, PermissionError)
    assert not isinstance(error, PublishError) and not isinstance(error, ConnectionLost)
    assert "refused user 'worker' permission to declare or consume q" in str(error)


def test_a_refusal_while_publishing_is_caught_as_access_refused_and_as_a_publish_connection_error() -> None:
    error = access_refused(SETTINGS, aiormq.exceptions.ChannelAccessRefused("403"), "publish", PublishAccessRefused)
    refused_login = connect_error(SETTINGS, pika.exceptions.ProbableAuthenticationError("403"))
    for e in (error, refused_login):
        assert isinstance(e, PublishAccessRefused)
        assert isinstance(e, AccessRefused) and isinstance(e, PermissionError)
        assert (
            isinstance(e, PublishConnectionError) and isinstance(e, ConnectionLost) and isinstance(e, ConnectionError)
        )
    assert "refused the login" in str(refused_login) and "secret" not in str(refused_login)


def test_a_result_that_is_not_json_is_a_payload_error_and_still_a_type_error() -> None:
    with pytest.raises(ResultNotSerialisable) as info:
        encode_success("t.opaque", object())
    assert isinstance(info.value, PayloadError) and isinstance(info.value, RabbitTaskError)
    assert isinstance(info.value, TypeError)


def test_a_remote_builtin_failure_is_also_an_instance_of_that_builtin() -> None:
    from rabbittask import TaskError
    from rabbittask.results.record import decode_result, encode_failure

    with pytest.raises(ValueError) as info:
        decode_result(encode_failure("t.parse", "ValueError", "not a number: 'x'", "Traceback ...", "task raised"))
    error = info.value
    assert isinstance(error, TaskError) and error.type_name == "ValueError"
    assert str(error) == "ValueError: not a number: 'x'"
    assert type(TaskError.remote("ValueError", "again")) is type(error)  # one class per builtin, cached
    assert isinstance(TaskError.remote("FileNotFoundError", "/x"), OSError)
    assert str(TaskError.remote("KeyError", "'k'")) == "KeyError: 'k'"  # not quoted again by KeyError.__str__
    # A type whose constructor takes other arguments falls back to a base that takes a message.
    assert isinstance(TaskError.remote("UnicodeDecodeError", "bad byte"), UnicodeError)


def test_a_remote_failure_of_a_user_type_is_a_plain_task_error() -> None:
    from rabbittask import TaskError

    error = TaskError.remote("SMTPRecipientsRefused", "no such user")
    assert type(error) is TaskError and str(error) == "SMTPRecipientsRefused: no such user"
    assert type(TaskError.remote("KeyboardInterrupt", "stop")) is TaskError  # not an Exception: never mixed in


def test_an_unconfirmed_publish_says_a_resend_may_run_the_task_twice_and_how_to_recognise_it() -> None:
    from rabbittask.message import Outgoing
    from rabbittask.publish.aio import AsyncPublisher

    publisher = AsyncPublisher(Settings(broker_url="amqp://u:pw@rabbit:5672/", publish_timeout_s=2), [])
    error = publisher.not_confirmed(Outgoing("emails", b"{}", "order-42", "shop.send_email"))
    assert str(error) == (
        "task 'shop.send_email' (id order-42) was not confirmed by the broker at rabbit:5672 within 2 s; it may or "
        "may not have been enqueued. To send it again, give it the same id (message_id='order-42'); the task may "
        "then run twice, as nothing removes the repeat, but a task can recognise it by its id (TaskContext.id) and "
        "skip it"
    )
    assert "safe" not in str(error)


def test_an_unreachable_broker_says_why_in_words_not_pika_class_names() -> None:
    from rabbittask import App
    from rabbittask.testing import free_port

    port = free_port()  # nothing listens there
    app = App("shop", broker_url=f"amqp://shop:s3cret@127.0.0.1:{port}/", connect_timeout_s=2)
    task = app.task(name="shop.ping", queue="q")(lambda: None)
    with pytest.raises(PublishConnectionError) as info:
        task.delay()
    assert str(info.value) == (
        f"cannot publish to the broker at 127.0.0.1:{port}: [Errno 111] Connection refused "
        "(is RabbitMQ running and reachable?)"
    )
    assert "s3cret" not in str(info.value) and "AMQP" not in str(info.value)
