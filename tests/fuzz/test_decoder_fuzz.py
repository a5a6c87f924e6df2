"""Bad input never crashes a worker and never runs: any body and properties, through the worker's stages.

Each case goes through `Judge.check` (harness.py): it is settled (run if valid, else dead-lettered
with a reason, or parked when its due time is ahead) and the next good message runs. `make test` runs
a few hundred cases; `make fuzz` runs the same tests with FUZZ_EXAMPLES raised, and atheris_decoder.py.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from pamqp.commands import Basic

from rabbittask.testing.stub import on_the_wire
from tests.fuzz.conftest import EXAMPLES
from tests.fuzz.harness import GOOD_BODY, Judge
from tests.fuzz.strategies import HEADERS, bodies, header_tables, huge_table, properties

fuzz = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
    database=None,
)


def encodable(body: bytes, props: Basic.Properties) -> None:
    """Skip a case AMQP cannot carry (pamqp refuses to encode it, as it would in a real publish)."""
    try:
        on_the_wire(props, len(body))
    except (TypeError, ValueError, OverflowError, UnicodeEncodeError):
        reject()


@fuzz
@given(body=bodies, props=properties())
def test_any_body_with_any_properties_is_settled_and_the_next_message_runs(
    judge: Judge, body: bytes, props: Basic.Properties
) -> None:
    encodable(body, props)
    judge.check(body, props)


@fuzz
@given(name=st.sampled_from(["fuzz.sync", "fuzz.async"]), headers=header_tables)
def test_a_valid_task_with_any_headers_runs_or_is_dead_lettered_with_a_reason(
    judge: Judge, name: str, headers: dict[str, object]
) -> None:
    props = Basic.Properties(content_type="application/json", message_id="m", message_type=name, headers=headers)
    encodable(GOOD_BODY, props)
    verdict = judge.check(GOOD_BODY, props)
    assert verdict.ran or verdict.dead_reason or verdict.scheduled


@fuzz
@given(name=st.sampled_from(HEADERS), width=st.integers(1, 30), depth=st.integers(0, 2))
def test_huge_header_tables_and_lists_in_any_header_are_settled(
    judge: Judge, name: str, width: int, depth: int
) -> None:
    table = huge_table(width, depth)
    for value in (table, list(table.values())):
        props = Basic.Properties(
            content_type="application/json", message_id="m", message_type="fuzz.sync", headers={name: value}
        )
        judge.check(GOOD_BODY, props)
