"""Prometheus metrics and health probes of a worker (`rabbittask worker --metrics-port 9400`).

Children count into prometheus_client's multiprocess files (`PROMETHEUS_MULTIPROC_DIR`, a temp
directory the supervisor creates before it forks and removes when it exits); the supervisor serves
their sum, so counts of replaced children stay in the totals. Children count at the events flush
(see events.py), from the same buffer: a task costs no more than its append to that list.

Children also sample their in-flight count and reconnects once a second (the events timer), and
time the broker's confirms of what they publish themselves (retry copies, dead letters, replies);
the supervisor counts the children it restarts. Metric names are listed in docs/operations.md.

The supervisor's HTTP thread answers `/metrics`, `/healthz` (the supervisor is alive) and `/readyz`
(200 once every child said it consumes, 503 before, and during a shutdown).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rabbittask.worker.events import Succeeded
    from rabbittask.worker.outcome import Outcome

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_PATH, HEALTHZ_PATH, READYZ_PATH = "/metrics", "/healthz", "/readyz"  # deploy/kubernetes probes these
# A confirm takes a fraction of a millisecond on a quiet broker, seconds under a memory alarm.
CONFIRM_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class TaskMetrics:
    """A child's task counters, histograms and gauges (import prometheus_client after the fork)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.tasks = Counter("rabbittask_tasks", "Tasks settled by a worker, by task and state.", ["task", "state"])
        self.runtime = Histogram("rabbittask_task_runtime_seconds", "Run time of tasks, by task.", ["task"])
        self.in_flight = Gauge(
            "rabbittask_tasks_in_flight",
            "Messages a worker holds unacked: running, waiting for a thread, or waiting for a confirm.",
            multiprocess_mode="livesum",
        )
        self.reconnects = Counter(
            "rabbittask_reconnects", "Times a worker child lost (or could not open) its broker connection."
        )
        self.publish_confirm = Histogram(
            "rabbittask_publish_confirm_seconds",
            "Time from publish to the broker's confirm, of what a worker publishes (retries, dead letters, replies).",
            buckets=CONFIRM_BUCKETS_S,
        )
        self._reconnects_seen = 0

    def sample(self, stats: dict[str, Any]) -> None:
        """Take the child's in-flight count and reconnects (from its heartbeat stats), once a second."""
        self.in_flight.set(stats["in_flight"])
        reconnects = stats["reconnects"]
        if reconnects > self._reconnects_seen:
            self.reconnects.inc(reconnects - self._reconnects_seen)
            self._reconnects_seen = reconnects

    def observe(self, outcomes: Sequence[Outcome], succeeded: Sequence[Succeeded] = ()) -> None:
        """Count a flushed batch: one counter increment per (task, state), one histogram sample per task.

        `succeeded` holds (id, task name, runtime, argsrepr, workflow) of tasks that succeeded (events.Succeeded).
        """
        from rabbittask.worker.events import state_of

        counts: dict[tuple[str, str], int] = {}
        for _, name, runtime_s, _, _ in succeeded:
            counts[(name, "succeeded")] = counts.get((name, "succeeded"), 0) + 1
            self.runtime.labels(name).observe(runtime_s)
        for o in outcomes:
            state = state_of(o)
            if state is None:
                continue
            counts[(o.task_name, state)] = counts.get((o.task_name, state), 0) + 1
            self.runtime.labels(o.task_name).observe(o.runtime_s)
        for (task, state), n in counts.items():
            self.tasks.labels(task, state).inc(n)


class MetricsServer:
    """The supervisor's `/metrics`, `/healthz` and `/readyz` endpoints, on a daemon thread."""

    def __init__(self, host: str, port: int, ready: Callable[[], bool]) -> None:
        self.directory = tempfile.mkdtemp(prefix="rabbittask-metrics-")
        os.environ[MULTIPROC_ENV] = self.directory  # before prometheus_client is imported, here or in a child
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        from prometheus_client import Counter

        self.restarts = Counter(
            "rabbittask_child_restarts",
            "Children the supervisor replaced, by reason: crashed, or retired (max tasks, memory, time limit, SIGHUP).",
            ["reason"],
        )

        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # only with --metrics-port

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
                path = self.path.split("?", 1)[0]
                if path == METRICS_PATH:
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path == HEALTHZ_PATH:
                    self._send(200, b"ok\n")
                elif path == READYZ_PATH:
                    is_ready = _safe(ready)
                    self._send(200 if is_ready else 503, b"ready\n" if is_ready else b"not ready\n")
                else:
                    self._send(404, b"not found\n")

            def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="rabbittask-metrics", daemon=True)

    @property
    def fileno(self) -> int:
        """The listening socket, which forked children close."""
        return self.server.fileno()

    def start(self) -> None:
        self._thread.start()
        host, port = self.server.server_address[:2]
        log.info("metrics on http://%s:%s/metrics (and /healthz, /readyz)", host, port)

    def child_exited(self, pid: int, restart: str | None) -> None:
        """Forget a dead child's live gauges; count its replacement when it gets one (`restart`: the reason)."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
        if restart is not None:
            self.restarts.labels(restart).inc()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        shutil.rmtree(self.directory, ignore_errors=True)
        os.environ.pop(MULTIPROC_ENV, None)


def _safe(ready: Callable[[], bool]) -> bool:
    with contextlib.suppress(RuntimeError):  # the supervisor changed its children meanwhile: ask again next probe
        return ready()
    return False
