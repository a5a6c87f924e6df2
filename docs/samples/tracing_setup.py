# OpenTelemetry in worker children (docs/events.md). The hook runs in each child after the fork.
# --8<-- [start:hook]
from rabbittask import App

app = App("shop")  # RABBITTASK_OTEL=true in the worker's environment


@app.on_worker_process_init
def tracing() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": "shop-worker"}))
    # In production: OTLPSpanExporter() from opentelemetry-exporter-otlp, to your collector.
    provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)


# --8<-- [end:hook]


if __name__ == "__main__":
    for hook in app.worker_process_init:  # what a worker child does after the fork
        hook()
    from opentelemetry import trace

    print(type(trace.get_tracer_provider()).__name__)  # TracerProvider
