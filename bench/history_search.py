"""Time a dashboard search by a piece of the arguments over 100,000 task events (`make bench-history`).

Builds the dashboard's task index (rabbittask/dashboard/tasks.py) from 100,000 events of realistic
shape (90,000 tasks: most succeeded, one in ten failed with a dead letter), then times searches
through the same `History` the dashboard feeds, median of 7 runs each. Prints the figures; asserts
only that the searches found what they must.
"""

from __future__ import annotations

import statistics
import time

from rabbittask.dashboard.history import History
from rabbittask.history.query import Query

EVENTS = 100_000
T0 = 1_800_000_000.0


def build() -> History:
    history = History({"shop.send_email", "shop.charge"}, now=T0)
    n = task = 0
    while n < EVENTS:
        name = "shop.send_email" if task % 2 else "shop.charge"
        args = f"('user{task}@example.com', {{'order': {task}, 'items': [1, 2, 3]}}, password='***')"
        base = {"id": f"{task:032x}", "task": name, "args": args, "runtime_s": 0.01}
        if task % 10 == 9:
            events = [{**base, "state": "failed", "exc_type": "ValueError", "exc_message": "bad"}]
            events.append({**base, "state": "dead-lettered"})
        else:
            events = [{**base, "state": "succeeded"}]
        history.feed(f"task.x.{name}", {"host": "web-1", "pid": 7, "ts": T0 + n / 1000, "events": events}, now=T0)
        n += len(events)
        task += 1
    return history


def timed(history: History, query: Query) -> tuple[float, int]:
    runs = []
    matched = 0
    for _ in range(7):
        started = time.perf_counter()
        _, matched = history.index.search(query)
        runs.append(time.perf_counter() - started)
    return statistics.median(runs), matched


def main() -> None:
    started = time.perf_counter()
    history = build()
    print(f"indexed {history.index.events:,} events of {len(history.index.records):,} tasks in "
          f"{time.perf_counter() - started:.2f} s")  # fmt: skip
    for label, query in (
        ("one task by an argument piece", Query(args="user45678@")),
        ("no match (a full scan)", Query(args="nobody@")),
        (
            "failed send_email with 'example' in the arguments",
            Query(task="shop.send_email", state="failed", args="example"),
        ),
    ):
        seconds, matched = timed(history, query)
        print(f"{label}: {matched:,} matched in {seconds * 1000:.1f} ms (median of 7)")
    assert timed(history, Query(args="user45678@"))[1] == 1


if __name__ == "__main__":
    main()
