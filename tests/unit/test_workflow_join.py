"""The join's state without a broker: records merge by index, partials replace what they carry, and a
chord completes once, with results in member order."""

from __future__ import annotations

from typing import Any

import pytest

from rabbittask import App, ArgumentsInvalid, ConfigError, chain, chord, group
from rabbittask.workflow import wire
from rabbittask.workflow.join import JoinState


def start(chord_id: str = "c", size: int = 3, **extra: Any) -> dict[str, Any]:
    return {"kind": "start", "chord": chord_id, "size": size, "callback": None, **extra}


def member(index: int, ok: bool = True, chord_id: str = "c", **extra: Any) -> dict[str, Any]:
    record = {"kind": "member", "chord": chord_id, "index": index, "id": f"{chord_id}:{index}", "ok": ok}
    return {**record, "result": index * 10} if ok else {**record, "reason": "task raised", **extra}


def test_a_chord_completes_once_every_index_and_its_start_are_in_whatever_the_order() -> None:
    state = JoinState()
    assert not state.add(member(2), 1).complete
    assert not state.add(member(0), 2).complete
    assert not state.add(start(), 3).complete  # index 1 still missing
    chord_ = state.add(member(1), 4)
    assert chord_.complete
    assert chord_.results() == [0, 10, 20]
    assert sorted(state.forget(chord_, done=True)) == [1, 2, 3, 4]
    assert state.held == 0 and state.is_done("c")


def test_a_redelivered_record_never_counts_twice() -> None:
    state = JoinState()
    state.add(start(size=2), 1)
    state.add(member(0), 2)
    chord_ = state.add(member(0), 3)  # the same member again (a redelivery, or its repeat after a crash)
    assert not chord_.complete and len(chord_.members) == 1


def test_a_partial_carries_the_state_it_replaces() -> None:
    state = JoinState()
    state.add(start(size=3, allow_failures=True), 1)
    state.add(member(0), 2)
    chord_ = state.add(member(1, ok=False, exc_type="ValueError", message="bad"), 3)
    partial = chord_.partial()
    state.forget(chord_)
    # The partial comes back later, with the last member; a duplicate of member 0 changes nothing.
    again = JoinState()
    again.add(member(0), 7)
    again.add(partial, 8)
    done = again.add(member(2), 9)
    assert done.complete
    results = done.results()
    assert results[0] == 0 and results[2] == 20
    assert results[1] == wire.failure_entry("c:1", 1, "task raised", "ValueError", "bad")
    assert done.failures() == [results[1]]


def test_a_member_replayed_after_failing_replaces_its_failure() -> None:
    state = JoinState()
    state.add(start(size=1), 1)
    state.add(member(0, ok=False), 2)
    assert state.chords["c"].failures()
    state.add(member(0), 3)
    assert state.chords["c"].failures() == []


def test_compaction_picks_chords_holding_more_than_one_record() -> None:
    state = JoinState()
    state.add(member(0, chord_id="a"), 1)
    state.add(member(1, chord_id="a"), 2)
    state.add(member(0, chord_id="b"), 3)
    assert [c.id for c in state.to_compact()] == ["a"]


def test_chords_held_too_long_are_found_by_the_time_of_their_oldest_record() -> None:
    state = JoinState()
    state.add(member(0, chord_id="old"), 1)
    state.chords["old"].since -= 700
    state.add(member(0, chord_id="new"), 2)
    import time

    assert [c.id for c in state.held_since(time.monotonic() - 600)] == ["old"]


def test_the_start_keeps_the_callers_reply_address() -> None:
    state = JoinState()
    chord_ = state.add(start(), 1, reply_to="amq.rabbitmq.reply-to.abc")
    assert chord_.start is not None and chord_.start["reply_to"] == "amq.rabbitmq.reply-to.abc"


# -- signatures and building, no broker ------------------------------------------------------------


@pytest.fixture
def app() -> App:
    app = App("wf-unit", declare_topology=False)

    @app.task(name="u.add")
    def add(x: int, y: int) -> int:
        return x + y

    return app


def test_a_partial_signature_may_miss_arguments_but_not_hold_wrong_ones(app: App) -> None:
    add = app.tasks["u.add"]
    assert add.s(1).args == (1,)  # `x` comes from the previous step
    with pytest.raises(ArgumentsInvalid, match="y: Input should be a valid integer"):
        add.s(1, "many")
    with pytest.raises(ArgumentsInvalid, match="u.add"):
        add.si(1)  # immutable: nothing comes later, it must be complete


def test_set_refuses_unknown_options_and_bad_values_with_the_task_named(app: App) -> None:
    add = app.tasks["u.add"]
    with pytest.raises(TypeError, match="'u.add': retries cannot be set"):
        add.s(1).set(retries=2)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="priority=3 needs a queue declared with max_priority"):
        add.s(1).set(priority=3)
    assert add.s(1).set(countdown=5).options == {"countdown": 5}


def test_ids_are_derived_from_the_workflow_id(app: App) -> None:
    add = app.tasks["u.add"]
    wf = add.s(1, 2) | add.s(3) | add.s(4)
    assert wf.ids() == [f"{wf.id}:0", f"{wf.id}:1", f"{wf.id}:2"]
    first = wf.first_message(wf.ids())
    assert first.message_id == f"{wf.id}:0" and first.headers and first.headers[wire.H_WORKFLOW] == wf.id
    flow = wire.flow_of(first.body)
    assert [s["id"] for s in flow.chain] == [f"{wf.id}:1", f"{wf.id}:2"]
    assert flow.chain[0]["args"] == [3] and flow.chain[0]["immutable"] is False


def test_groups_and_chords_refuse_what_is_not_a_signature(app: App) -> None:
    with pytest.raises(ConfigError, match="member 0 is str"):
        group(["nope"]).delay()  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="chord body: expected a task signature"):
        chord([app.tasks["u.add"].s(1, 2)], "nope")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="a chain inside a chain"):
        chain(app.tasks["u.add"].s(1, 2), chain(app.tasks["u.add"].s(1)))  # type: ignore[call-overload]


def test_status_merges_the_chords_of_all_heartbeats() -> None:
    from rabbittask.ops.heartbeat import Heartbeat
    from rabbittask.ops.status import workflows_of

    beats = [
        Heartbeat(host="h", pid=1, chords=(("c1", 10, 100), ("c2", 3, 3))),
        Heartbeat(host="h", pid=2, chords=(("c1", 40, 100),)),  # a newer joiner took over
    ]
    assert workflows_of(beats) == [{"id": "c1", "done": 40, "total": 100}, {"id": "c2", "done": 3, "total": 3}]
    assert Heartbeat.decode(beats[0].encode()).chords == (("c1", 10, 100), ("c2", 3, 3))


def test_the_pipe_flattens_chains_on_either_side(app: App) -> None:
    add = app.tasks["u.add"]
    wf = add.s(1, 2) | (add.s(3) | add.s(4))
    assert [s.args for s in wf.steps] == [(1, 2), (3,), (4,)]
    assert [s.args for s in (wf | (add.s(5) | add.s(6))).steps] == [(1, 2), (3,), (4,), (5,), (6,)]
