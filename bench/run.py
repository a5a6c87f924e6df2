"""`make bench`: run every case's rows interleaved, several times, and print/write one table.

    python -m bench.run [--only A1,B1] [--reps N] [--queue-type quorum|classic|both]

`BENCH_N` sets the message count of the 20k cases (the others scale with it), `BENCH_REPS` the
repetitions; `BENCH_BROKER_URL` or `RABBITTASK_BROKER_URL` the broker.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench import broker, procs, report, rt
from bench.cases import CASES, RT, Case, RowFn
from bench.config import Counts, Names, broker_url, default_reps
from bench.row import RowContext

RESULTS = Path(__file__).parent / "results"
QUEUE_TYPES = {"quorum": ["quorum"], "classic": ["classic"], "both": ["quorum", "classic"]}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated cases: " + ",".join(c.key for c in CASES))
    parser.add_argument("--reps", type=int, default=default_reps(), help="repetitions (env BENCH_REPS, default 3)")
    parser.add_argument("--queue-type", choices=sorted(QUEUE_TYPES), default="both")
    parser.add_argument("--no-rabbittask", action="store_true", help="run the raw reference rows only")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    known = {c.key for c in CASES}
    args.only = [k.strip().upper() for k in args.only.split(",")] if args.only else sorted(known)
    if unknown := set(args.only) - known:
        parser.error(f"unknown case(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    return args


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def meta(url: str, counts: Counts, reps: int, queue_types: list[str]) -> dict[str, Any]:
    return {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "broker": asyncio.run(broker.server_version(url)),
        "python": platform.python_version(),
        **{dist: version(dist) for dist in ("rabbittask", "pika", "aio-pika", "aiormq")},
        "cpu_count": os.cpu_count(),
        "loadavg_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "platform": platform.platform(),
        "counts": f"A1 {counts.sequential}, A2/B1/B2 {counts.batch}, C {counts.calls} calls",
        "reps": reps,
        "queue_types": ", ".join(queue_types),
    }


def run_row(case: Case, impl: str, fn: RowFn, ctx: RowContext, results: report.Results, console: Console) -> str:
    key = (case.key, ctx.queue_type, impl)
    results.loads.setdefault(key, []).append(os.getloadavg()[0])
    keep = False
    try:
        m = fn(ctx)
        results.add(key, m)
        if m.leftover:
            results.fail(key, f"{m.leftover} messages left in {ctx.queue} after the drain")
        extra = f" / p99 {m.p99_ms:.2f}" if m.p99_ms is not None else ""
        return f"{m.value:,.2f}{extra} {case.unit}" + (f" [red]{m.leftover} LEFT IN QUEUE[/]" if m.leftover else "")
    except Exception as e:
        keep = True
        error = f"{type(e).__name__}: {e}"
        for log in sorted(Path(ctx.workdir).glob("*.log")):
            if tail := procs.log_tail(ctx.workdir, log.stem):
                console.print(f"[dim]{log}:\n{tail}[/]")
                error += f" ({log.stem}: {tail.splitlines()[-1]})"
        results.fail(key, error)
        return f"[red]failed: {error}[/] (logs in {ctx.workdir})"
    finally:
        try:
            asyncio.run(broker.delete(ctx.url, ctx.delete_queues, ctx.delete_exchanges))
        except Exception as e:
            console.print(f"[red]could not delete {ctx.delete_queues + ctx.delete_exchanges}: {e}[/]")
        if not keep:
            shutil.rmtree(ctx.workdir, ignore_errors=True)


def plan(
    cases: list[Case], queue_types: list[str], reps: int, with_rt: bool
) -> list[tuple[int, Case, str, str, RowFn]]:
    """Interleaved: every row once per rep; the order of implementations flips on odd reps."""
    steps = []
    for rep in range(reps):
        for case in cases:
            for qt in queue_types:
                impls = [(name, fn) for name, fn in case.impls() if with_rt or not name.startswith(RT)]
                steps += [(rep, case, qt, name, fn) for name, fn in (impls[::-1] if rep % 2 else impls)]
    return steps


def leftovers(prefix: str) -> list[str] | None:
    """Names under `prefix` still on a local broker (via rabbitmqctl), or None when that cannot be checked."""
    if not shutil.which("rabbitmqctl"):
        return None
    found = []
    for what in ("list_queues", "list_exchanges"):
        try:
            out = subprocess.run(
                ["rabbitmqctl", "-q", what, "name"], capture_output=True, text=True, timeout=60, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        found += [n for n in out.stdout.split() if n.startswith(prefix)]
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    console = Console(width=None if sys.stdout.isatty() else 150)
    url, counts, names = broker_url(), Counts.from_env(), Names()
    queue_types = QUEUE_TYPES[args.queue_type]
    cases = [c for c in CASES if c.key in args.only]
    notes: list[str] = []
    rt_error = "disabled by --no-rabbittask" if args.no_rabbittask else rt.available()
    if rt_error:
        notes.append(f"rabbittask not available: {rt_error}")
        console.print(f"[yellow]rabbittask not available: {rt_error}[/] (raw rows only)")
    info = meta(url, counts, args.reps, queue_types)
    console.print(" · ".join(f"{k} {v}" for k, v in info.items()))
    results = report.Results()
    steps = plan(cases, queue_types, args.reps, with_rt=not rt_error)
    started = time.monotonic()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("", total=len(steps))
        for rep, case, qt, impl, fn in steps:
            where = f"rep {rep + 1}/{args.reps} {case.key} {qt} {impl}"
            progress.update(bar, description=where)
            workdir = tempfile.mkdtemp(prefix=names.prefix)
            n = case.count(counts)
            ctx = RowContext(
                url, names.queue(f"{case.key}.{re.sub(r'[^a-z0-9]+', '-', impl)}"), qt, n, workdir, names.prefix
            )
            progress.console.print(f"{where}: {run_row(case, impl, fn, ctx, results, progress.console)}")
            progress.advance(bar)
    info["duration_s"] = round(time.monotonic() - started)
    info["loadavg_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    busiest = max((x for xs in results.loads.values() for x in xs), default=0.0)
    if busiest > (os.cpu_count() or 1) * 0.75:
        notes.append(f"the machine was busy (1-min load up to {busiest:.1f} on {os.cpu_count()} CPUs): expect noise")
    left = leftovers(names.prefix)
    if left:
        notes.append(f"left on the broker: {', '.join(left)}")
    elif left is None:
        notes.append("leftover check skipped (no local rabbitmqctl)")
    for (case_key, qt, impl), errors in results.errors.items():
        counted = collections.Counter(errors)
        notes.append(f"{impl} {case_key} {qt}: " + "; ".join(f"{e} (x{c})" if c > 1 else e for e, c in counted.items()))
    table_lines = report.lines(cases, queue_types, results)
    report.print_table(console, table_lines, f"rabbittask bench — median of {args.reps} interleaved reps")
    for note in notes:
        console.print(f"[yellow]{note}[/]")
    report.write(args.results_dir, info, table_lines, results, notes)
    console.print(f"written: {args.results_dir / 'latest.json'}, {args.results_dir / 'latest.md'}")
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main())
