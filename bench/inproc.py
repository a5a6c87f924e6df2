"""One worker child draining pre-queued no-ops in this process, for profilers: CPU per message, no subprocesses.

    python -m bench.inproc N [--prefetch P] [--queue-type quorum|classic]
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p python -m bench.inproc 2000
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p python -m bench.inproc 6000

Instructions per message = (instructions at 6000 - at 2000) / 4000: start-up cancels out, and the count
does not drift with the load of a shared machine. It prints CPU µs per message between the first and
the last task (`getrusage`), and the prefetch the child ended at.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import time

from bench import broker
from bench.config import broker_url
from rabbittask import App
from rabbittask.worker.child import Child


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int)
    parser.add_argument("--prefetch", type=int, default=None, help="pin it (default: adaptive)")
    parser.add_argument("--queue-type", default="quorum", choices=["quorum", "classic"])
    args = parser.parse_args()
    queue = f"bench.inproc.{os.getpid()}"
    app = App("bench-inproc", broker_url=broker_url(), exchange=f"{queue}.x", events=False)
    marks: dict[str, float] = {}
    done = 0
    child: Child | None = None

    def noop(i: int) -> None:
        nonlocal done
        done += 1
        if done == 1:
            marks["cpu0"], marks["t0"] = cpu_s(), time.perf_counter()
        if done == args.n:
            marks["cpu1"], marks["t1"] = cpu_s(), time.perf_counter()
            assert child is not None
            child.lifecycle.signal()  # warm shutdown, as SIGTERM would

    options = {} if args.queue_type == "quorum" else {"queue_type": "classic"}
    task = app.task(queue=queue, name="bench.inproc.noop", **options)(noop)
    declared = [d for d in app.declarations() if hasattr(d, "name")]
    exchanges = [d.name for d in declared if type(d).__name__ == "ExchangeDecl"]
    queues = [d.name for d in declared if type(d).__name__ != "ExchangeDecl"]
    try:
        app.declare()
        with app.batch():
            for i in range(args.n):
                task.delay(i)
        child = Child(app, [queue], prefetch=args.prefetch)
        asyncio.run(child.run())
        level = child.adaptive.level if child.adaptive is not None else args.prefetch
        cpu_us = (marks["cpu1"] - marks["cpu0"]) / max(1, args.n - 1) * 1e6
        rate = (args.n - 1) / (marks["t1"] - marks["t0"])
        print(f"{args.n} tasks: {cpu_us:.1f} CPU µs/msg, {rate:,.0f} msg/s, prefetch at the end {level}")
    finally:
        app.close()
        asyncio.run(broker.delete(broker_url(), queues, exchanges))


if __name__ == "__main__":
    main()
