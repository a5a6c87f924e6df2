"""Test app for trace context: a task that sends another; worker children export spans as JSON lines.

`RT_TEST_SPANS` names the file; `RABBITTASK_OTEL=true` turns spans on. The exporter is set up in
`on_worker_process_init`, as a user would set up an OTLP exporter: after the fork, in each child.
"""

from __future__ import annotations

import os

from rabbittask import App


def make_app(prefix: str, broker_url: str | None = None, **settings: object) -> App:
    app = App("traced-tests", broker_url=broker_url, **settings)

    @app.task(queue=f"{prefix}.main", name="traced.leaf")
    def leaf(n: int) -> int:
        return n

    @app.task(queue=f"{prefix}.side", name="traced.side")
    def side(n: int) -> int:
        return n

    @app.task(queue=f"{prefix}.main", name="traced.parent")
    def parent(n: int, to_side: bool = False) -> None:
        (side if to_side else leaf).delay(n)

    @app.on_worker_process_init
    def export_spans() -> None:
        path = os.environ.get("RT_TEST_SPANS")
        if not path:
            return
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

        out = open(path, "a", buffering=1)  # noqa: SIM115 - open for the life of the child
        exporter = ConsoleSpanExporter(out=out, formatter=lambda span: span.to_json(indent=None) + "\n")
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)

    return app


app = make_app(os.environ.get("RT_TEST_PREFIX", "traced"))
