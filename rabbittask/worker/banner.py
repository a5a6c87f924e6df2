"""The worker's start-up banner: what runs, against which broker, consuming what, with which limits.

One log record at INFO: in the text format a block a person reads once (like Celery's banner); in
the JSON format one object whose `rt` fields carry the same facts. The broker URL's password is masked.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from rabbittask.settings import mask_url
from rabbittask.topology import QueueSpec, dlq_name
from rabbittask.worker.prefetch import CEILING, adaptive_allowed

if TYPE_CHECKING:
    from rabbittask.app import App
    from rabbittask.worker.options import WorkerOptions


def queue_text(spec: QueueSpec) -> str:
    """`quorum, delivery limit 20, max length 1000 (reject-publish), single active consumer`."""
    parts: list[str] = [spec.queue_type]
    if spec.queue_type == "quorum" and spec.delivery_limit is not None:
        parts.append(f"delivery limit {spec.delivery_limit}")
    if spec.max_priority is not None:
        parts.append(f"priorities 0..{spec.max_priority}")
    if spec.max_length is not None:
        parts.append(f"max length {spec.max_length}" + (f" ({spec.overflow})" if spec.overflow else ""))
    if spec.partitions:  # partitions.py: <queue>.p0 ... behind a consistent-hash exchange
        kind = "ordered by key" if spec.single_active_consumer else "fair"
        parts.append(f"{spec.partitions} partitions {spec.name}.p0..p{spec.partitions - 1} ({kind})")
    elif spec.single_active_consumer:
        parts.append("single active consumer")
    if spec.message_ttl_ms is not None:
        parts.append(f"messages expire after {spec.message_ttl_ms / 1000:g} s")
    return ", ".join(parts)


def banner(app: App, queues: list[str], options: WorkerOptions, version: str) -> tuple[str, dict[str, Any]]:
    """The banner's text and its fields."""
    settings = app.settings
    prefetch = options.prefetch or settings.prefetch
    adaptive = adaptive_allowed(app, queues, pinned=options.prefetch, max_tasks=options.max_tasks_per_child)
    prefetch_text = f"adaptive, {prefetch} to {CEILING} per child" if adaptive else f"{prefetch} per child"
    tasks = sorted((t for t in app.tasks.values() if t.queue in queues), key=lambda t: t.name)
    width = max((len(t.name) for t in tasks), default=0)
    qwidth = max(len(q) for q in queues)
    limits = []
    if options.max_tasks_per_child:
        limits.append(f"{options.max_tasks_per_child} tasks")
    if options.max_memory_per_child_mb:
        limits.append(f"{options.max_memory_per_child_mb:g} MB")
    threads = f"{options.threads} thread(s)" + (
        f", sync tasks under {options.inline_ms:g} ms run inline" if options.threads == 1 and options.inline_ms else ""
    )
    lines = [
        f"rabbittask {version} worker of app {app.name!r} (supervisor pid {os.getpid()})",
        f"  broker       {mask_url(settings.broker_url)}",
        f"  exchange     {settings.exchange} (dead letters: <queue>.dlq, delays on {settings.exchange}.delay.*)",
        f"  concurrency  {options.concurrency} child process(es) x {threads}, on {options.loop}",
        f"  prefetch     {prefetch_text}",
        f"  replace      a child after {' or '.join(limits)}"
        if limits
        else "  replace      children never (no limits)",
        f"  shutdown     warm, waits {options.shutdown_timeout_s:g} s for running tasks",
        "  results      "
        + (mask_url(settings.result_backend) if settings.result_backend else "none stored (.call() only)"),
        "  queues",
        *(f"    {q:<{qwidth}}  {queue_text(app.queues[q])}; dead letters in {dlq_name(q)}" for q in queues),
        f"  tasks ({len(tasks)})",
        *(f"    {t.name:<{width}}  -> {t.queue}{' (async)' if t.is_async else ''}" for t in tasks),
    ]
    fields = {
        "event": "worker-start",
        "version": version,
        "app": app.name,
        "broker": mask_url(settings.broker_url),
        "exchange": settings.exchange,
        "concurrency": options.concurrency,
        "threads": options.threads,
        "loop": options.loop,
        "prefetch": prefetch,
        "prefetch_adaptive": adaptive,
        "queues": {q: queue_text(app.queues[q]) for q in queues},
        "tasks": {t.name: t.queue for t in tasks},
    }
    return "\n".join(lines), fields
