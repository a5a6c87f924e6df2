"""How a call becomes a message without a broker: send_task by name, and priorities a queue would ignore."""

from __future__ import annotations

import json

import pytest

from rabbittask import App, ArgumentsInvalid, ConfigError
from rabbittask.sending import message_by_name


def noop(to: str) -> str:
    return to


def test_send_task_of_a_name_the_app_does_not_declare_sends_the_arguments_unvalidated_to_the_queue() -> None:
    app = App("producer")
    msg = message_by_name(app, "shop.tasks.send_email", ["ada@example.com"], {"subject": "hi"}, {"queue": "emails"})
    assert (msg.task_name, msg.routing_key) == ("shop.tasks.send_email", "emails")
    assert json.loads(msg.body) == {"v": 1, "args": ["ada@example.com"], "kwargs": {"subject": "hi"}}


def test_send_task_without_a_queue_goes_to_the_default_queue() -> None:
    app = App("producer", default_queue="work")
    assert message_by_name(app, "any.task", (), None, {}).routing_key == "work"


def test_send_task_of_a_declared_task_validates_its_arguments_and_uses_its_queue() -> None:
    app = App("shop")
    app.task(name="send", queue="emails")(noop)
    assert message_by_name(app, "send", ["a@b.c"], None, {}).routing_key == "emails"
    with pytest.raises(ArgumentsInvalid) as info:
        message_by_name(app, "send", [42], None, {})
    assert str(info.value) == "invalid arguments for task 'send': to: Input should be a valid string (got 42)"


def test_send_task_refuses_what_is_not_a_task_name_or_not_arguments_saying_what_to_give() -> None:
    app = App("producer")
    with pytest.raises(ConfigError) as info:
        app.send_task("send email")
    assert str(info.value) == (
        "send_task: 'send email' is not a task name: use the name the task is registered under, "
        "e.g. 'shop.tasks.send_email' (letters, digits and _ . : -)"
    )
    with pytest.raises(ArgumentsInvalid) as args_info:
        app.send_task("shop.send", args="ada@example.com")  # type: ignore[arg-type]
    assert str(args_info.value).startswith("task 'shop.send': args must be a tuple or list of the positional arguments")
    with pytest.raises(ArgumentsInvalid) as kwargs_info:
        app.send_task("shop.send", kwargs=[("to", "a")])  # type: ignore[arg-type]
    assert str(kwargs_info.value) == (
        "task 'shop.send': kwargs must be a dict of the keyword arguments, got list [('to', 'a')]"
    )


def test_a_priority_on_a_quorum_queue_without_max_priority_is_refused_saying_how_to_declare_one() -> None:
    app = App("shop")
    send = app.task(name="send", queue="emails")(noop)
    with pytest.raises(ConfigError) as info:
        send.apply_async(("a@b.c",), priority=5)
    assert str(info.value) == (
        "task 'send': priority=5 needs a queue declared with max_priority, and queue 'emails' is a quorum queue "
        "without one: @app.task(queue='emails', max_priority=10) (quorum queues keep priorities on RabbitMQ 4.0+; "
        "on 3.x use queue_type='classic', a new queue: see docs/topology.md); or send without priority"
    )


def test_a_priority_on_a_quorum_queue_with_max_priority_is_sent_within_its_range() -> None:
    app = App("shop")
    ranked = app.task(name="ranked", queue="ranked", max_priority=10)(noop)
    assert ranked.message(("a",), priority=0).priority == 0
    assert ranked.message(("a",), priority=10).priority == 10
    with pytest.raises(ConfigError) as info:
        ranked.message(("a",), priority=11)
    assert str(info.value) == ("task 'ranked': priority=11 is outside 0..10, the max_priority of queue 'ranked'")


def test_a_priority_on_a_classic_queue_without_max_priority_or_above_it_is_refused() -> None:
    app = App("shop", queue_type="classic")
    plain = app.task(name="plain", queue="plain")(noop)
    with pytest.raises(ConfigError) as without:
        plain.message(("a",), priority=1)
    assert str(without.value) == (
        "task 'plain': priority=1 needs a queue declared with max_priority, and queue 'plain' is a classic queue "
        "without one: @app.task(queue='plain', max_priority=10) (the queue's arguments change: see "
        "docs/topology.md); or send without priority"
    )
    ranked = app.task(name="ranked", queue="ranked", max_priority=5)(noop)
    assert ranked.message(("a",), priority=5).priority == 5
    with pytest.raises(ConfigError) as info:
        ranked.message(("a",), priority=9)
    assert str(info.value) == (
        "task 'ranked': priority=9 is outside 0..5, the max_priority of queue 'ranked' (the broker would treat it as 5)"
    )
    with pytest.raises(ConfigError) as kind:
        ranked.message(("a",), priority="high")  # type: ignore[typeddict-item]
    assert str(kind.value) == (
        "task 'ranked': invalid send option(s): priority: Input should be a valid integer, unable to parse string "
        "as an integer (got 'high')"
    )


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            {"countdown": "soon"},
            "countdown: Input should be a valid number, unable to parse string as a number (got 'soon')",
        ),
        ({"eta": "tomorrow"}, "eta: Input should be a valid datetime or date, input is too short (got 'tomorrow')"),
        ({"message_id": 42}, "message_id: Input should be a valid string (got 42)"),
        ({"headers": "x-tenant=7"}, "headers: Input should be a valid dictionary (got 'x-tenant=7')"),
        ({"queue": 5}, "queue: Input should be a valid string (got 5)"),
    ],
)
def test_a_send_option_of_the_wrong_type_names_the_option_and_the_value(
    options: dict[str, object], expected: str
) -> None:
    app = App("shop")
    send = app.task(name="send", queue="emails")(noop)
    with pytest.raises(ConfigError) as info:
        send.apply_async(("a@b.c",), **options)  # type: ignore[arg-type]
    assert str(info.value) == f"task 'send': invalid send option(s): {expected}"


def test_args_that_are_not_a_sequence_say_how_to_pass_one_argument() -> None:
    app = App("shop")
    send = app.task(name="send", queue="emails")(noop)
    with pytest.raises(ArgumentsInvalid) as info:
        send.apply_async("a@b.c")  # type: ignore[arg-type]
    assert str(info.value) == (
        "task 'send': args must be a tuple or list of the positional arguments, got str 'a@b.c': "
        "e.g. apply_async(('a@b.c',)) for one argument"
    )
    with pytest.raises(ArgumentsInvalid, match="kwargs must be a dict of the keyword arguments, got list"):
        send.apply_async((), [("to", "a@b.c")])  # type: ignore[arg-type]
    assert send.message(["a@b.c"]).routing_key == "emails"  # a list is fine


def test_an_eta_given_as_iso_text_is_read_as_a_datetime() -> None:
    app = App("shop")
    send = app.task(name="send", queue="emails")(noop)
    msg = send.message(("a@b.c",), eta="2999-01-01T00:00:00+00:00")  # type: ignore[typeddict-item]
    assert msg.delay_ms > 0
