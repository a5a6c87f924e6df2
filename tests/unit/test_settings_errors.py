"""Mistakes in settings say which setting, which environment variable, what was given and what to do."""

from __future__ import annotations

import pytest

from rabbittask import App, ConfigError, Settings


def refusal(**settings: object) -> str:
    with pytest.raises(ConfigError) as info:
        App("shop", **settings)
    message = str(info.value)
    assert "pydantic" not in message and "errors.pydantic.dev" not in message and "type=" not in message
    return message


def test_a_mistyped_setting_gets_the_closest_name() -> None:
    assert refusal(brokr_url="amqp://localhost") == (
        "invalid settings for app 'shop': unknown setting 'brokr_url' (did you mean broker_url?)"
    )


def test_a_celery_setting_says_what_rabbittask_does_instead() -> None:
    assert refusal(task_acks_late=True) == (
        "invalid settings for app 'shop': unknown setting 'task_acks_late' (rabbittask always acks after the task "
        "finished (late ack): there is nothing to set)"
    )


def test_a_broker_url_that_is_not_amqp_says_what_one_looks_like_and_hides_the_password() -> None:
    message = refusal(broker_url="redis://user:s3cret@localhost:6379/0")
    assert message == (
        "invalid settings for app 'shop': broker_url 'redis://user:***@localhost:6379/0' is not an AMQP URL: use "
        "amqp://user:password@host:5672/vhost (amqps:// for TLS; several: comma-separated)"
    )
    assert "s3cret" not in refusal(broker_url="amqp://user:s3cret@localhost:port/")


def test_each_url_of_a_cluster_list_is_checked() -> None:
    assert "broker_url 'localhost:5672' is not an AMQP URL" in refusal(broker_url="amqp://a:5672/,localhost:5672")


def test_a_value_of_the_wrong_type_names_the_setting_its_variable_and_the_value() -> None:
    assert refusal(prefetch="many") == (
        "invalid settings for app 'shop': prefetch (RABBITTASK_PREFETCH): Input should be a valid integer, unable "
        "to parse string as an integer (got 'many')"
    )


def test_a_bad_environment_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RABBITTASK_PUBLISH_TIMEOUT_S", "-1")
    with pytest.raises(ConfigError) as info:
        Settings.read({}, "the dlq command")
    assert str(info.value) == (
        "invalid settings for the dlq command: publish_timeout_s (RABBITTASK_PUBLISH_TIMEOUT_S): "
        "Input should be greater than 0 (got '-1')"
    )


def test_a_check_across_settings_is_said_as_it_was_raised() -> None:
    assert refusal(signing_key_id="k1") == (
        "invalid settings for app 'shop': signing_key_id 'k1' is not in signing_keys (known: none)"
    )
