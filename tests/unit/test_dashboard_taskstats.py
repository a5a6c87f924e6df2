"""Per-task figures: count, failure rate, runtime percentiles over the window and per minute."""

from __future__ import annotations

import random

from rabbittask.dashboard.history import History
from rabbittask.dashboard.taskstats import Runtimes

T0 = 1_800_000_000.0


def test_percentiles_from_log_buckets_are_within_five_percent_of_the_exact_ones() -> None:
    rng = random.Random(7)
    values = sorted(rng.lognormvariate(-4, 1.2) for _ in range(20_000))
    runtimes = Runtimes()
    for v in values:
        runtimes.add(v)
    for q in (0.5, 0.95, 0.99):
        exact = values[int(q * len(values)) - 1]
        estimate = runtimes.quantile(q)
        assert estimate is not None and abs(estimate - exact) / exact < 0.05, (q, exact, estimate)
    assert Runtimes().quantile(0.5) is None


def test_the_table_counts_finished_runs_failure_rate_and_percentiles_per_task() -> None:
    history = History({"shop.charge", "shop.ship"}, now=T0)
    events = [{"id": f"c{i}", "task": "shop.charge", "state": "succeeded", "runtime_s": 0.01} for i in range(8)]
    for i in range(2):  # a failure is reported failed and dead-lettered
        events += [
            {"id": f"f{i}", "task": "shop.charge", "state": s, "runtime_s": 1.0} for s in ("failed", "dead-lettered")
        ]
    events += [{"id": "r", "task": "shop.charge", "state": "retried", "runtime_s": 0.5}]
    history.feed("task.x", {"host": "h", "pid": 1, "ts": T0, "events": events}, now=T0)
    (charge,) = history.stats.table()
    assert {k: charge[k] for k in ("task", "count", "succeeded", "failed", "retried", "dead_lettered")} == {
        "task": "shop.charge", "count": 10, "succeeded": 8, "failed": 2, "retried": 1, "dead_lettered": 2,
    }  # fmt: skip
    assert charge["failure_rate"] == 0.2
    assert abs(charge["p50_s"] - 0.01) < 0.0005 and abs(charge["p99_s"] - 1.0) < 0.05  # 11 runs: dead letters don't run
    series = history.stats.series("shop.charge", history.minutes_shown(now=T0 + 61))
    assert series["runs"] == [11, 0] and series["p50_s"][1] is None


def test_events_older_than_the_plot_count_in_the_table_but_not_in_the_charts() -> None:
    history = History({"t"}, now=T0)
    history.feed(
        "task.x", {"ts": T0, "events": [{"id": "a", "task": "t", "state": "succeeded", "runtime_s": 0.1}]}, now=T0
    )
    old = T0 - 2 * 3600
    history.feed(
        "task.x", {"ts": old, "events": [{"id": "b", "task": "t", "state": "succeeded", "runtime_s": 0.1}]}, now=old
    )
    assert history.stats.table()[0]["count"] == 2
    assert sum(history.stats.series("t", history.minutes_shown(now=T0))["runs"]) == 1
    assert sum(history.rates(now=T0)["series"]["succeeded"]) == 1 and history.totals["succeeded"] == 2
