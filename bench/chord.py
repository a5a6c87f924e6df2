"""`make bench`, workflows: a chord of N no-op members (default 10,000) beside B1's drain, in one run.

    python -m bench.chord [--n 10000] [--reps 3]

Per rep, two rows on fresh queues, each drained by `rabbittask worker -c 1 --prefetch 1000`:

* B1: N pre-queued no-op tasks (the drain rate of the main table's B1 row, measured again here);
* chord: `chord((noop.s(i) for i in range(N)), joined.s()).delay()`, pre-queued the same way. Members/s
  is N / (first member start .. last member completion), from the same per-process counters as B1.
  Join latency is the callback's start minus the last member's completion (its task body's end): the
  member's report to the join queue and its confirm (the settle), the joiner's count (with its
  compactions), the callback's publish and delivery.

Writes `bench/results/chord.md` and `chord.json`; figures are for reading beside B1, not asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pika

from bench.broker import ReadyWatcher
from bench.config import broker_url, default_reps
from bench.procs import spawn, stop, wait_count

RESULTS = Path(__file__).parent / "results"


def _worker(queue: str) -> list[str]:
    script = Path(sys.executable).with_name("rabbittask")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "rabbittask"]
    return [*base, "worker", "-A", "bench.chord_tasks:app", "-Q", queue, "-c", "1", "--prefetch", "1000"]


def _delete(url: str, queues: list[str], exchanges: list[str]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        for q in queues:
            channel.queue_delete(q)
        for x in exchanges:
            channel.exchange_delete(x)
    finally:
        connection.close()


def row(kind: str, n: int, seq: int) -> dict[str, float]:
    """One row: fill the queue, start the worker, wait for the drain (and the callback); its figures."""
    from bench.chord_tasks import build

    url = broker_url()
    queue = f"bench.{os.getpid()}.chord.{kind}.{seq}"
    app, noop, joined = build(queue, f"{queue}.x")
    names = [d for d in app.declarations() if hasattr(d, "name")]
    queues = [d.name for d in names if type(d).__name__ == "QueueDecl"]
    exchanges = [d.name for d in names if type(d).__name__ == "ExchangeDecl"] + [f"{queue}.x.events"]
    workdir = tempfile.mkdtemp(prefix="bench-chord-")
    watcher = ReadyWatcher(url, queue)
    try:
        app.declare()
        if kind == "chord":
            from rabbittask import chord

            chord((noop.s(i) for i in range(n)), joined.s()).delay()
        else:
            with app.batch():
                for i in range(n):
                    noop.delay(i)
        watcher.wait(n)
        env = {"BENCH_QUEUE": queue, "BENCH_EXCHANGE": f"{queue}.x"}
        proc = spawn(_worker(queue), workdir, "worker", env)
        try:
            totals = wait_count(workdir, n, [proc], timeout_s=60 + n / 200)
            figures = {"rate": totals.rate()}
            if kind == "chord":
                marker = Path(workdir) / "joined.ns"
                deadline = time.monotonic() + 120
                while not marker.exists() or not marker.read_text().strip():
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"the chord's callback did not start within 120 s ({workdir})")
                    time.sleep(0.01)
                figures["join_latency_ms"] = (int(marker.read_text()) - totals.last_ns) / 1e6
        finally:
            stop([proc])
    finally:
        watcher.close()
        app.close()
        _delete(url, queues, exchanges)
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.chord", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=int(os.environ.get("CHORD_N", "10000")))
    parser.add_argument("--reps", type=int, default=default_reps())
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    b1: list[float] = []
    members: list[float] = []
    latency: list[float] = []
    for rep in range(args.reps):
        order = ["b1", "chord"] if rep % 2 == 0 else ["chord", "b1"]  # noise hits both sides alike
        for kind in order:
            figures = row(kind, args.n, rep)
            if kind == "b1":
                b1.append(figures["rate"])
            else:
                members.append(figures["rate"])
                latency.append(figures["join_latency_ms"])
            print(f"rep {rep + 1}: {kind:5} {figures}", flush=True)
    med = statistics.median
    lines = [
        f"| row (N={args.n}, `-c 1 --prefetch 1000`, quorum) | median of {args.reps} | reps |",
        "|---|---|---|",
        f"| B1: drain of pre-queued no-op tasks | {med(b1):,.0f} msg/s | {', '.join(f'{v:,.0f}' for v in b1)} |",
        f"| chord members (no-op), drained | {med(members):,.0f} members/s "
        f"({med(members) / med(b1):.2f}x B1) | {', '.join(f'{v:,.0f}' for v in members)} |",
        f"| join latency: last member finished -> callback started | {med(latency):,.0f} ms | "
        f"{', '.join(f'{v:,.0f}' for v in latency)} |",
    ]
    print("\n".join(lines))
    args.results_dir.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "n": args.n,
        "reps": args.reps,
        "b1_msg_s": b1,
        "chord_members_s": members,
        "join_latency_ms": latency,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_avg": os.getloadavg(),
    }
    (args.results_dir / "chord.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.results_dir / "chord.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
