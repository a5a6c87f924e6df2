"""Per-queue options: the arguments they become, and the combinations refused at declaration time."""

from __future__ import annotations

import pytest

from rabbittask import App, ConfigError
from rabbittask.topology import QueueSpec, queue_arguments


def test_options_become_queue_arguments() -> None:
    spec = QueueSpec("q", "classic", max_priority=5, max_length=100, overflow="reject-publish-dlx")
    spec2 = QueueSpec("q2", single_active_consumer=True, message_ttl_ms=60_000, max_length=10)
    assert queue_arguments(spec, "ex") == {
        "x-queue-type": "classic",
        "x-dead-letter-exchange": "ex.dlx",
        "x-dead-letter-routing-key": "q",
        "x-max-priority": 5,
        "x-max-length": 100,
        "x-overflow": "reject-publish-dlx",
    }
    args = queue_arguments(spec2, "ex")
    assert args["x-single-active-consumer"] is True
    assert args["x-message-ttl"] == 60_000
    assert args["x-max-length"] == 10
    assert args["x-overflow"] == "reject-publish"  # quorum task queues always reject publishes when full


def test_default_queue_has_no_optional_arguments() -> None:
    args = queue_arguments(QueueSpec("q"), "ex")
    assert not {"x-max-length", "x-single-active-consumer", "x-message-ttl", "x-max-priority"} & set(args)


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"queue_type": "quorum", "max_priority": 0}, "1..255"),
        ({"queue_type": "quorum", "max_length": 10, "overflow": "drop-head"}, "overflow='reject-publish'"),
        ({"queue_type": "quorum", "max_length": 10, "overflow": "reject-publish-dlx"}, "at-least-once"),
        ({"queue_type": "classic", "overflow": "drop-head"}, "without max_length"),
        ({"queue_type": "classic", "max_length": 10, "overflow": "drop-tail"}, "overflow must be one of"),
        ({"queue_type": "classic", "max_priority": 256}, "1..255"),
        ({"queue_type": "classic", "max_length": -1}, "max_length"),
        ({"queue_type": "classic", "message_ttl_ms": -5}, "message_ttl_ms"),
    ],
)
def test_invalid_queue_options_are_refused_with_the_reason(options: dict[str, object], says: str) -> None:
    with pytest.raises(ConfigError, match="queue 'q'") as caught:
        QueueSpec("q", **options)  # type: ignore[arg-type]
    assert says in str(caught.value)


def test_task_options_reach_the_queue_spec() -> None:
    app = App("t")

    @app.task(name="a", queue="q", queue_type="classic", max_priority=3, max_length=5, overflow="drop-head")
    def a() -> None: ...

    @app.task(name="b", queue="r", single_active_consumer=True, message_ttl_ms=1000, delivery_limit=4)
    def b() -> None: ...

    assert app.queues["q"] == QueueSpec("q", "classic", 20, 3, max_length=5, overflow="drop-head")
    assert app.queues["r"] == QueueSpec("r", "quorum", 4, single_active_consumer=True, message_ttl_ms=1000)


def test_delivery_limit_on_a_classic_queue_is_enforced_by_the_worker_not_an_argument() -> None:
    app = App("t")

    @app.task(name="a", queue="q", queue_type="classic", delivery_limit=3)
    def a() -> None: ...

    assert app.queues["q"].delivery_limit == 3
    assert "x-delivery-limit" not in queue_arguments(app.queues["q"], "rabbittask")


def test_two_tasks_with_different_queue_options_are_refused() -> None:
    app = App("t")

    @app.task(name="a", queue="q", max_length=5)
    def a() -> None: ...

    with pytest.raises(ConfigError, match="different options"):

        @app.task(name="b", queue="q", single_active_consumer=True)
        def b() -> None: ...

    @app.task(name="c", queue="q")  # no options: shares the queue as declared
    def c() -> None: ...
