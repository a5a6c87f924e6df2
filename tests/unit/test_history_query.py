"""The history's arguments repr (masked, cut) and the filters of a search."""

from __future__ import annotations

import pytest

from rabbittask import App
from rabbittask.history.argsrepr import ARGSREPR_CHARS, H_ARGSREPR, args_repr
from rabbittask.history.query import Query, flatten, parse_time
from rabbittask.topology import history_arguments

NOW = 1_800_000_000.0


def test_masked_arguments_show_stars_by_parameter_name_positional_or_keyword() -> None:
    text = args_repr(
        ("ann@example.com", "hunter2"), {"token": "abc", "n": 3}, ["to", "password"], {"password", "token"}
    )
    assert text == "('ann@example.com', '***', token='***', n=3)"
    assert "hunter2" not in text and "abc" not in text


def test_long_arguments_are_cut() -> None:
    text = args_repr(["x" * 5000] * 50, {}, ["a"])
    assert len(text) <= ARGSREPR_CHARS and text.endswith("...")


def test_a_task_with_mask_args_sends_its_arguments_masked_in_a_header() -> None:
    app = App("shop")

    @app.task(mask_args=("password",))
    def login(user: str, password: str) -> None: ...

    msg = login.message(("ann", "hunter2"))
    assert msg.headers is not None and msg.headers[H_ARGSREPR] == "('ann', '***')"
    assert b"hunter2" in msg.body  # the task still gets it: only the history hides it
    # Without history the producer writes nothing for it
    quiet = App("quiet", history=False)
    assert quiet.task(login.fn, name="q.login").message(("ann", "x")).headers is None


def test_a_search_filters_by_id_task_state_worker_time_and_a_piece_of_the_arguments() -> None:
    message = {
        "host": "web-1",
        "pid": 42,
        "ts": NOW,
        "events": [
            {"id": "a", "task": "shop.send_email", "state": "failed", "args": "('ann@example.com',)"},
            {"id": "b", "task": "shop.send_email", "state": "succeeded", "args": "('bob@example.com',)"},
            {"id": "c", "task": "shop.charge", "state": "failed"},
        ],
    }
    events = list(flatten(message))
    assert events[0]["worker"] == "web-1:42" and events[0]["ts"] == NOW

    def ids(query: Query) -> list[str]:
        return [e["id"] for e in events if query.matches(e)]

    assert ids(Query()) == ["a", "b", "c"]
    assert ids(Query(task="shop.send_email", state="failed")) == ["a"]
    assert ids(Query(args="bob@")) == ["b"]
    assert ids(Query(task_id="c")) == ["c"]
    assert ids(Query(worker="web-1")) == ["a", "b", "c"] and ids(Query(worker="web-2")) == []
    assert ids(Query(since=NOW + 1)) == [] and ids(Query(until=NOW)) == ["a", "b", "c"]


def test_times_are_durations_ago_or_iso_times_and_anything_else_says_what_to_write() -> None:
    assert parse_time("1h", NOW) == NOW - 3600
    assert parse_time("90s", NOW) == NOW - 90 and parse_time("2d", NOW) == NOW - 172_800
    assert parse_time("1970-01-01T00:01:00", NOW) == 60.0
    with pytest.raises(ValueError, match=r"'yesterday' is not a time: use a duration ago \(90s, 30m, 1h, 2d, 1w\)"):
        parse_time("yesterday", NOW)
    with pytest.raises(ValueError, match="unknown state 'lost': use one of received, started, succeeded"):
        Query(state="lost")


def test_the_history_stream_keeps_events_by_age_and_size() -> None:
    assert history_arguments(86_400, 1_000_000_000) == {
        "x-queue-type": "stream",
        "x-max-age": "86400s",
        "x-max-length-bytes": 1_000_000_000,
        "x-stream-max-segment-size-bytes": 100_000_000,
    }


def test_a_unique_key_is_the_task_arguments_or_what_unique_key_returns() -> None:
    from rabbittask.errors import ConfigError
    from rabbittask.unique import key_of, unique_arguments, unique_queue_name

    assert key_of("t", (1,), {"a": "x"}) == key_of("t", [1], {"a": "x"}) != key_of("t", (2,), {"a": "x"})
    assert key_of("t", ("ann",), {"day": "mon"}, lambda user, **_: user) == "ann"
    name = unique_queue_name("shop", "shop.report", "ann")
    assert name.startswith("shop.unique.shop.report.") and len(name) < 255
    assert unique_arguments(60) == {
        "x-queue-type": "classic",
        "x-max-length": 1,
        "x-overflow": "reject-publish",
        "x-message-ttl": 60_000,
        "x-expires": 120_000,
    }
    with pytest.raises(ConfigError, match="task 't': unique_key must return a str, it returned int"):
        key_of("t", (1,), {}, lambda n: n)
    with pytest.raises(ConfigError, match="task 't': unique_key does not take the call's arguments"):
        key_of("t", (1, 2), {}, lambda n: str(n))


def test_unique_for_must_be_a_positive_number_of_seconds() -> None:
    from rabbittask.errors import ConfigError

    app = App("shop")
    with pytest.raises(ConfigError, match=r"task 'shop.x': invalid option\(s\) for @app.task: unique_for"):

        @app.task(name="shop.x", unique_for=0)
        def x() -> None: ...
