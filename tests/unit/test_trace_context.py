"""Trace context without a broker: traceparent forwarded by a running task, nothing of OpenTelemetry imported
unless asked for, and the message a user sees when `otel=True` lacks the extra."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import pytest

from rabbittask import App, ConfigError, tracing
from rabbittask.message import encode_body
from rabbittask.worker.execute import run_sync

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def delivered(app: App, task: str, args: tuple[Any, ...], headers: dict[str, Any] | None) -> Any:
    props = SimpleNamespace(
        message_id="m1", message_type=task, headers=headers, content_type="application/json", correlation_id=None
    )
    delivery = SimpleNamespace(exchange=app.settings.exchange, routing_key="q", redelivered=False)
    return SimpleNamespace(header=SimpleNamespace(properties=props), body=encode_body(args, {}), delivery=delivery)


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> App:
    monkeypatch.setattr(tracing, "spans", None)
    app = App("tracing-unit", history=False)  # no rt-argsrepr: the trace headers alone

    @app.task(queue="q", name="t.child")
    def child(n: int) -> None:
        pass

    @app.task(queue="q", name="t.parent")
    def parent(n: int) -> dict[str, Any]:
        return child.message((n,)).headers or {}  # what child.delay(n) would send

    return app


def test_a_task_passes_the_traceparent_of_its_message_to_the_tasks_it_sends(app: App) -> None:
    state = "vendor=1"
    outcome = run_sync(app, delivered(app, "t.parent", (1,), {"traceparent": TP.encode(), "tracestate": state}))
    assert outcome.ok, outcome.traceback
    assert outcome.value == {"traceparent": TP, "tracestate": state}
    # without one, and outside a task, messages carry no trace headers
    assert run_sync(app, delivered(app, "t.parent", (1,), {"rt-attempt": 2})).value == {}
    assert app.tasks["t.child"].message((1,)).headers is None


def test_nothing_of_opentelemetry_is_imported_unless_otel_is_on() -> None:
    code = (
        "import sys, rabbittask, rabbittask.worker.process, rabbittask.cli\n"
        "app = rabbittask.App('x')\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'imported'\n"
        "rabbittask.App('y', otel=True)\n"
        "assert 'opentelemetry.trace' in sys.modules\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr


def test_otel_without_the_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing, "spans", None)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "rabbittask.otel", raising=False)
    with pytest.raises(ConfigError) as e:
        App("shop", otel=True)
    assert "otel=True (RABBITTASK_OTEL) needs OpenTelemetry, which is not installed" in str(e.value)
    assert "pip install 'rabbittask[otel]'" in str(e.value)
