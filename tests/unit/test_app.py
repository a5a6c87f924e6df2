"""Declaring tasks and settings: mistakes fail at import with a clear message."""

from __future__ import annotations

import inspect

import pytest

from rabbittask import App, ArgumentsInvalid, ConfigError, TaskNotFound
from rabbittask.app import TaskOptions
from rabbittask.retry import RETRY_OPTIONS
from rabbittask.settings import host_port, mask_url
from rabbittask.task import SendOptions


def noop() -> None: ...


def test_unknown_task_options_fail_at_declaration() -> None:
    app = App("t")
    with pytest.raises(ConfigError, match="unknown option 'retries' \\(the option is max_retries\\) for @app.task"):

        @app.task(queue="q", retries=3)
        def f() -> None: ...


def test_an_unknown_option_names_the_option_the_task_and_every_valid_option() -> None:
    app = App("t")
    with pytest.raises(ConfigError) as info:

        @app.task(name="emails.send", queue="q", retries=3)
        def send() -> None: ...

    assert str(info.value) == (
        "task 'emails.send': unknown option 'retries' (the option is max_retries) for @app.task; "
        f"known options are {', '.join(sorted(TaskOptions.model_fields))}"
    )
    assert "emails.send" not in app.tasks


def test_a_mistyped_option_gets_the_closest_names_and_a_celery_option_what_to_do_instead() -> None:
    app = App("t")
    with pytest.raises(ConfigError) as typo:
        app.task(name="a", qeue="emails")(noop)
    assert str(typo.value).startswith("task 'a': unknown option 'qeue' (did you mean queue?) for @app.task; known")
    with pytest.raises(ConfigError) as celery:
        app.task(name="b", acks_late=True)(noop)
    assert str(celery.value).startswith(
        "task 'b': unknown option 'acks_late' (rabbittask always acks after the task finished (late ack): there is "
        "nothing to set) for @app.task; known options are"
    )


def test_an_option_of_the_wrong_type_names_the_option_and_the_task() -> None:
    app = App("t")
    with pytest.raises(ConfigError, match=r"task 'a': invalid option\(s\) for @app.task: max_retries: .*\(got '3'\)"):
        app.task(name="a", max_retries="3")(noop)


def test_the_decorator_takes_exactly_the_fields_of_task_options() -> None:
    # The decorator has no keywords of its own: it reads TaskOptions, so the two cannot drift apart.
    params = inspect.signature(App.task).parameters.values()
    assert [p.kind for p in params][1:] == [inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_KEYWORD]
    assert RETRY_OPTIONS <= TaskOptions.model_fields.keys()  # every retry policy field is an option
    # Every field is accepted, each set to its default value.
    app = App("t")
    every = {name: field.default for name, field in TaskOptions.model_fields.items()}
    task = app.task(**{**every, "name": "all", "max_retries": 2})(noop)
    assert task.name == "all" and task.retry_policy.max_retries == 2


def test_task_names_default_to_module_and_function_and_must_be_unique() -> None:
    app = App("t")

    @app.task
    def hello(name: str) -> str:
        return f"hi {name}"

    assert hello.name.endswith("test_task_names_default_to_module_and_function_and_must_be_unique.hello")
    assert hello.queue == "default"
    assert hello("x") == "hi x"  # calling the task runs it here
    with pytest.raises(ConfigError, match="declared twice"):
        app.task(name=hello.name)(noop)
    with pytest.raises(TaskNotFound, match="task 'nope' is not registered in app 't'"):
        app.get_task("nope")


def test_max_priority_is_taken_on_quorum_and_classic_queues() -> None:
    app = App("t")
    quorum = app.task(queue="p", max_priority=5)(noop)  # the broker's version is checked when it is declared
    classic = app.task(queue="p2", queue_type="classic", max_priority=5, name="prio")(noop)
    assert app.queues[quorum.queue].max_priority == app.queues[classic.queue].max_priority == 5


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RABBITTASK_BROKER_URL", "amqp://u:p@example.org:5673/v")
    monkeypatch.setenv("RABBITTASK_PUBLISH_TIMEOUT_S", "2.5")
    app = App("env")
    assert app.settings.broker_url == "amqp://u:p@example.org:5673/v"
    assert app.settings.publish_timeout_s == 2.5
    with pytest.raises(ConfigError, match="invalid settings for app 'bad'"):
        App("bad", publish_timeout_s=-1)


def test_arguments_are_validated_against_the_signature() -> None:
    app = App("t")

    @app.task(name="send")
    def send(to: str, times: int = 1) -> None: ...

    assert send.validate(("a",), {"times": "3"}) == (("a",), {"times": 3})
    with pytest.raises(ArgumentsInvalid) as info:
        send.validate((), {"times": "x", "extra": 1})
    assert str(info.value) == (
        "invalid arguments for task 'send': to: Missing required argument; "
        "times: Input should be a valid integer, unable to parse string as an integer (got 'x'); "
        "extra: Unexpected keyword argument (got 1)"
    )


def test_passwords_are_masked_in_urls_and_host_port_is_derived() -> None:
    assert mask_url("cannot reach amqp://alice:s3cret@h:5672/v ok") == "cannot reach amqp://alice:***@h:5672/v ok"
    assert mask_url("amqp://localhost/") == "amqp://localhost/"
    assert host_port("amqp://u:p@rabbit.example:5673/") == "rabbit.example:5673"
    assert host_port("amqps://rabbit.example/") == "rabbit.example:5671"


def test_settings_never_show_passwords_in_their_repr() -> None:
    app = App("t", broker_url="amqp://alice:pw-in-url-77@h:5672/", result_backend="redis://:redis-pw-88@r:6379/0")
    text = repr(app.settings) + str(app.settings)
    assert "pw-in-url-77" not in text and "redis-pw-88" not in text
    assert "amqp://alice:***@h:5672/" in text


def test_every_way_of_sending_takes_the_send_options_of_one_definition() -> None:
    app = App("t")
    send = app.task(name="send", queue="emails", queue_type="classic", max_priority=5)(noop)
    methods = (send.message, send.apply_async, send.aapply_async, send.s().apply_async, send.s().aapply_async)
    for method in (*methods, app.send_task, app.asend_task):
        options = inspect.signature(method).parameters["options"]
        assert options.kind is inspect.Parameter.VAR_KEYWORD and options.annotation == "Unpack[SendOptions]"
    msg = send.message((), queue="emails", priority=3, headers={"h": 1}, message_id="m-1", expires=60)
    assert (msg.routing_key, msg.priority, msg.message_id, msg.headers["h"]) == ("emails", 3, "m-1", 1)
    assert "rt-expires" in msg.headers
    assert set(SendOptions.__optional_keys__) == {
        "queue", "priority", "headers", "message_id", "countdown", "eta", "expires", "celery"
    }  # fmt: skip


def test_an_unknown_send_option_is_refused_naming_it_and_the_known_ones() -> None:
    app = App("t")
    send = app.task(name="send")(noop)
    with pytest.raises(TypeError) as info:
        send.apply_async((), countdwn=5)  # type: ignore[call-arg]
    assert str(info.value) == (
        "task 'send' got unknown send option 'countdwn' (did you mean countdown?); "
        "the send options are celery, countdown, eta, expires, headers, message_id, priority, queue"
    )


def test_a_task_declared_in_a_script_is_named_after_the_script_not_main(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    from rabbittask.task import default_task_name

    # Given a module run as `python billing.py`: it is __main__ to itself, `billing` to the worker
    script = types.ModuleType("__main__")
    script.__file__ = "/srv/shop/billing.py"
    script.__spec__ = None
    monkeypatch.setitem(sys.modules, "__main__", script)

    def charge() -> None: ...

    charge.__module__, charge.__qualname__ = "__main__", "charge"
    assert default_task_name(charge) == "billing.charge"


def test_an_unknown_task_name_suggests_the_close_ones_and_the_likely_cause() -> None:
    app = App("shop")
    app.task(name="shop.tasks.send_email")(noop)
    with pytest.raises(TaskNotFound) as info:
        app.get_task("shop.task.send_email")
    assert str(info.value) == (
        "task 'shop.task.send_email' is not registered in app 'shop' (did you mean 'shop.tasks.send_email'?); "
        "is the worker running the same code as the sender?"
    )
