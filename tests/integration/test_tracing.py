"""Trace context through a real worker: OpenTelemetry spans of publish and run, linked across processes,
and a `traceparent` passed on by a worker without OpenTelemetry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from rabbittask import App, tracing
from tests import amqp
from tests.apps.traced import make_app
from tests.waiting import wait_until
from tests.workers import WorkerFactory

APP = "tests.apps.traced:app"
_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans_here(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Spans of this process, in memory (the global provider can be set once per process)."""
    if not getattr(trace.get_tracer_provider(), "_rabbittask_test", False):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        provider._rabbittask_test = True  # type: ignore[attr-defined]
        trace.set_tracer_provider(provider)
    monkeypatch.setattr(tracing, "spans", None)  # the app below turns spans on; undone after the test
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


@pytest.fixture
def prefix(unique_name: str, amqp_cleanup: Any) -> str:
    for q in ("main", "side"):
        amqp_cleanup.queue(f"{unique_name}.{q}")
        amqp_cleanup.queue(f"{unique_name}.{q}.dlq")
    return unique_name


def read_spans(path: Path, count: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """The spans a worker exported to `path` (JSON lines), once it holds `count`."""

    def exported() -> list[str] | None:
        lines = path.read_text().splitlines() if path.exists() else []
        return lines if len(lines) >= count else None

    lines = wait_until(exported, timeout_s, f"{count} spans exported to {path.name}", interval_s=0.1)
    return [json.loads(line) for line in lines]


def test_publish_and_run_spans_are_linked_from_the_caller_through_the_worker(
    prefix: str, broker_url: str, worker_factory: WorkerFactory, tmp_path: Path, spans_here: InMemorySpanExporter
) -> None:
    # Given a worker whose children export their spans (set up in on_worker_process_init)
    exported = tmp_path / "spans.jsonl"
    w = worker_factory(
        APP, "-Q", f"{prefix}.main", prefix=prefix, env={"RABBITTASK_OTEL": "true", "RT_TEST_SPANS": str(exported)}
    )
    w.wait_for_log("consuming from")
    app = make_app(prefix, broker_url, otel=True)
    try:
        # When a web request sends a task, which sends another
        with trace.get_tracer("web").start_as_current_span("GET /signup") as request:
            handle = app.tasks["traced.parent"].delay(7)  # type: ignore[attr-defined]
    finally:
        app.close()
    # Then the caller's publish span is a PRODUCER child of the request, with messaging attributes
    [publish] = [s for s in spans_here.get_finished_spans() if s.kind == trace.SpanKind.PRODUCER]
    trace_id = request.get_span_context().trace_id
    assert publish.name == f"publish {prefix}.main" and publish.context.trace_id == trace_id
    assert publish.parent is not None and publish.parent.span_id == request.get_span_context().span_id
    assert publish.attributes is not None
    assert dict(publish.attributes) == {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": "rabbittask",
        "messaging.rabbitmq.destination.routing_key": f"{prefix}.main",
        "messaging.message.id": handle.id,
        "messaging.message.body.size": publish.attributes["messaging.message.body.size"],
        "rabbittask.task.name": "traced.parent",
    }
    # and the worker child exported: process parent -> publish leaf -> process leaf, all in the same trace
    spans = read_spans(exported, 3)
    by_name = {(s["name"], s["attributes"]["rabbittask.task.name"]): s for s in spans}
    run_parent = by_name[(f"process {prefix}.main", "traced.parent")]
    send_leaf = by_name[(f"publish {prefix}.main", "traced.leaf")]
    run_leaf = by_name[(f"process {prefix}.main", "traced.leaf")]
    assert {s["context"]["trace_id"] for s in spans} == {f"0x{trace_id:032x}"}
    assert run_parent["kind"] == "SpanKind.CONSUMER" and send_leaf["kind"] == "SpanKind.PRODUCER"
    assert run_parent["parent_id"] == f"0x{publish.context.span_id:016x}"
    assert send_leaf["parent_id"] == run_parent["context"]["span_id"]
    assert run_leaf["parent_id"] == send_leaf["context"]["span_id"]
    assert run_parent["attributes"]["messaging.destination.subscription.name"] == f"{prefix}.main"
    assert run_parent["attributes"]["messaging.message.id"] == handle.id
    assert run_parent["attributes"]["messaging.system"] == "rabbitmq"
    assert w.stop() == 0


def test_a_worker_without_opentelemetry_passes_the_traceparent_on(
    prefix: str, broker_url: str, worker_factory: WorkerFactory
) -> None:
    # Given a worker without spans, consuming only the main queue
    w = worker_factory(APP, "-Q", f"{prefix}.main", prefix=prefix)
    w.wait_for_log("consuming from")
    app: App = make_app(prefix, broker_url)
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    try:
        # When a caller that traces sends a task with its trace context, and that task sends another
        app.tasks["traced.parent"].apply_async((1, True), headers={"traceparent": traceparent})
        amqp.wait_depth(broker_url, f"{prefix}.side", 1)
    finally:
        app.close()
    # Then the task it sent carries the same trace context
    [(props, _)] = amqp.get_all(broker_url, f"{prefix}.side")
    assert props.type == "traced.side"
    assert props.headers["traceparent"] == traceparent
    assert w.stop() == 0


def test_a_failing_worker_process_init_hook_stops_the_worker_and_says_why(
    prefix: str, worker_factory: WorkerFactory, tmp_path: Path
) -> None:
    # Given a hook that cannot open its span file (the path is a directory)
    w = worker_factory(APP, "-Q", f"{prefix}.main", prefix=prefix, env={"RT_TEST_SPANS": str(tmp_path)})
    # Then the worker halts with EX_CONFIG instead of restarting children in a loop, naming the hook and the error
    assert w.proc.wait(20) == 78
    log = w.log()
    assert "on_worker_process_init hook make_app.<locals>.export_spans failed: IsADirectoryError" in log
    assert "a configuration error (see its log above); a restart would fail the same way" in log
