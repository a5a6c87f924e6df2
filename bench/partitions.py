"""Partitioned queues, measured: throughput of an ordered queue against a plain one, and a tenant's wait.

    python -m bench.partitions [--n 20000] [--keys 200] [--backlog 50000] [--children 4]

Throughput: `n` no-op tasks over `keys` keys are queued, then one worker with `children` children
drains them from a plain queue, and from an ordered queue of 8 partitions (`partition_by`); the rate is
taken from the first message consumed to the last. Fairness: tenant A queues `backlog` tasks of
1 ms and then tenant B one, then a worker of `children` children starts; B's wait is from the worker's
first message to the start of B's task, on a plain queue and on a fair one (`fair_by`, 16 partitions).
Writes bench/results/partitions-<time>.md as well as printing it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pika

from bench.config import broker_url
from rabbittask.task import Task

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"


def depth(channel: pika.adapters.blocking_connection.BlockingChannel, queues: list[str]) -> int:
    return sum(channel.queue_declare(q, passive=True).method.message_count for q in queues)


@contextmanager
def worker(env: dict[str, str], queue: str, children: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    cmd = [sys.executable, "-m", "rabbittask", "worker", "-A", "bench.partition_app:app", "-Q", queue]
    with open(log, "wb") as out:
        proc = subprocess.Popen([*cmd, "-c", str(children)], env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(60)


def wait_log(log: Path, text: str, count: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while log.read_text(errors="replace").count(text) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"worker did not log {text!r} {count}x:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)


def throughput(env: dict[str, str], app: object, kind: str, n: int, keys: int, children: int, tmp: Path) -> float:
    from bench import partition_app as pa

    task = {"plain": pa.plain, "ordered": pa.ordered}[kind]
    spec = pa.app.queues[task.queue]
    queues = [f"{task.queue}.p{i}" for i in range(spec.partitions)] if spec.partitions else [task.queue]
    with pa.app.batch():
        for seq in range(n // keys):
            for k in range(keys):
                task.delay(f"k{k}", seq)
    connection = pika.BlockingConnection(pika.URLParameters(env["RABBITTASK_BROKER_URL"]))
    channel = connection.channel()
    try:
        with worker(env, task.queue, children, tmp / f"{kind}.log"):
            while (left := depth(channel, queues)) >= n:
                time.sleep(0.005)
            started, first_left = time.perf_counter(), left
            while depth(channel, queues) > 0:
                time.sleep(0.02)
            took = time.perf_counter() - started
    finally:
        connection.close()
    return first_left / took


def tenant_wait(env: dict[str, str], kind: str, backlog: int, children: int, tmp: Path) -> tuple[float, int]:
    """B's wait in seconds from the worker's first message, and how many of A's tasks were still queued then."""
    from bench import partition_app as pa

    task = {"plain": pa.plain, "fair": pa.fair}[kind]
    spec = pa.app.queues[task.queue]
    queues = [f"{task.queue}.p{i}" for i in range(spec.partitions)] if spec.partitions else [task.queue]
    marks = Path(env["BENCH_MARK_DIR"])
    connection = pika.BlockingConnection(pika.URLParameters(env["RABBITTASK_BROKER_URL"]))
    channel = connection.channel()
    probe = own_partition(channel, task, queues, f"probe-{kind}")
    try:
        with pa.app.batch():
            for seq in range(backlog):
                task.delay("tenant-a", seq)
        task.delay(probe, 0)
        with worker(env, task.queue, children, tmp / f"fair-{kind}.log") as proc:
            while depth(channel, queues) > backlog:  # until the worker takes its first message
                time.sleep(0.002)
            started = time.time()
            while not list(marks.glob(f"{probe}.*")):
                if proc.poll() is not None:
                    raise RuntimeError((tmp / f"fair-{kind}.log").read_text()[-2000:])
                time.sleep(0.005)
            left = depth(channel, queues)
            ran = float(next(marks.glob(f"{probe}.*")).read_text())
            while depth(channel, queues) > 0:  # drain, so the next case starts on empty queues
                time.sleep(0.2)
    finally:
        connection.close()
    return ran - started, left


def own_partition(
    channel: pika.adapters.blocking_connection.BlockingChannel, task: Task[Any, Any], queues: list[str], name: str
) -> str:
    """A tenant name for B that does not hash to A's partition (two given tenants share one 1 time in 16)."""
    if len(queues) == 1:
        return name

    def where(tenant: str) -> str:
        task.delay(tenant, 0)
        found = next(q for q in queues if channel.queue_declare(q, passive=True).method.message_count)
        channel.queue_purge(found)
        return found

    busy = where("tenant-a")
    return next(f"{name}-{i}" for i in range(100) if where(f"{name}-{i}") != busy)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.partitions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--backlog", type=int, default=50_000)
    parser.add_argument("--children", type=int, default=4)
    parser.add_argument("--work-ms", type=float, default=1.0, help="run time of a fairness task")
    args = parser.parse_args(argv)
    prefix = f"bench-part-{os.getpid()}"
    tmp = Path(tempfile.mkdtemp(prefix="bench-part-"))
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "BENCH_PREFIX": prefix,
        "BENCH_MARK_DIR": str(tmp),
        "RABBITTASK_BROKER_URL": broker_url(),
    }
    os.environ.update({k: env[k] for k in ("BENCH_PREFIX", "BENCH_MARK_DIR", "RABBITTASK_BROKER_URL")})
    from bench import partition_app as pa

    pa.app.declare()
    lines = [
        f"# Partitioned queues ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC, RabbitMQ at {broker_url().split('@')[-1]})",
        "",
        f"Throughput: {args.n} no-op tasks over {args.keys} keys, one worker `-c {args.children}`.",
        "",
        "| queue | msg/s |",
        "|---|---|",
    ]
    try:
        for kind in ("plain", "ordered"):
            rate = throughput(env, pa.app, kind, args.n, args.keys, args.children, tmp)
            lines.append(f"| {kind}{' (8 partitions, partition_by)' if kind == 'ordered' else ''} | {rate:,.0f} |")
            print(lines[-1], flush=True)
        lines += [
            "",
            f"Fairness: tenant A queues {args.backlog} tasks of {args.work_ms:g} ms, then tenant B one; then "
            f"one worker `-c {args.children}` starts. B's wait: from the worker's first message to B's start.",
            "",
            "| queue | B's wait | A's tasks still queued when B's started |",
            "|---|---|---|",
        ]
        env["BENCH_WORK_S"] = str(args.work_ms / 1000)
        for kind in ("plain", "fair"):
            wait_s, left = tenant_wait(env, kind, args.backlog, args.children, tmp)
            label = "fair (16 partitions, fair_by)" if kind == "fair" else "plain"
            lines.append(f"| {label} | {wait_s:.3f} s | {left:,} |")
            print(lines[-1], flush=True)
    finally:
        _delete(pa)
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"partitions-{datetime.now(UTC):%Y%m%d-%H%M%S}.md").write_text(text)
    return 0


def _delete(pa: object) -> None:
    from bench import partition_app as app_module

    connection = pika.BlockingConnection(pika.URLParameters(broker_url()))
    channel = connection.channel()
    for spec in app_module.app.queues.values():
        names = [f"{spec.name}.p{i}" for i in range(spec.partitions)] if spec.partitions else [spec.name]
        for q in [*names, f"{spec.name}.dlq"]:
            channel.queue_delete(q)
        if spec.partitions:
            channel.exchange_delete(f"{app_module.app.settings.exchange}.{spec.name}.hash")
    connection.close()


if __name__ == "__main__":
    sys.exit(main())
