"""Helpers of the fault scenarios: the ledger app as the test process builds it, confirmed publishing, and the
checks every scenario ends with (nothing confirmed is lost; every duplicate is explained)."""

from __future__ import annotations

from typing import Any

from rabbittask import App, BatchNotConfirmed
from tests.faults.ledger import Ledger, Report, report_line

APP = "tests.apps.ledger_app:app"


def ledger_app(url: str, prefix: str, **settings: Any) -> App:
    """The ledger app as the test process builds it (same task names and queue as the worker's)."""
    app = App(
        "ledger", broker_url=url, **{"heartbeat_s": 2, "publish_timeout_s": 3, "connect_timeout_s": 3, **settings}
    )

    @app.task(queue=f"{prefix}.work", name="ledger.work")
    def work(key: str, sleep_s: float = 0.0, cpu_s: float = 0.0) -> str: ...

    @app.task(queue=f"{prefix}.work", name="ledger.once", dedupe_s=60)
    def once(key: str) -> str: ...

    @app.task(queue=f"{prefix}.work", name="ledger.crash")
    def crash(key: str) -> None: ...

    @app.task(queue=f"{prefix}.rpc", name="ledger.echo")
    async def echo(key: str, sleep_s: float = 0.0) -> str: ...

    return app


def publish(app: App, ledger: Ledger, n: int, start: int = 0, sleep_s: float = 0.0, **kwargs: Any) -> None:
    """Publish n tasks with confirms in one batch, recording confirmed keys (`kwargs` go to `ledger.work`)."""
    keys = [f"k{i}" for i in range(start, start + n)]
    work = app.tasks["ledger.work"]
    try:
        with app.batch():
            for k in keys:
                work.apply_async((k,), {"sleep_s": sleep_s, **kwargs}, message_id=k)
    except BatchNotConfirmed as e:
        ledger.failed |= set(e.failed_ids)
        ledger.confirmed |= set(keys) - set(e.failed_ids)
    else:
        ledger.confirmed |= set(keys)


def finish(
    ledger: Ledger,
    scenario: str,
    reports: list[Report],
    fault_end: float | None = None,
    timeout_s: float = 60,
    allow_duplicates: bool = True,
    require_explained: bool = True,
) -> Report:
    """Wait for every confirmed key to run, report the scenario, and assert that none was lost.

    Unless `require_explained` is off, a key that ran twice must have been redelivered or re-sent.
    """
    ledger.wait_executed(ledger.confirmed, timeout_s)
    report = ledger.report(scenario, fault_end)
    reports.append(report)
    report_line(report.line())
    assert report.lost == [], report.line()
    if require_explained:
        assert report.unexplained == [], f"run again without a redelivery or re-send: {report.unexplained[:10]}"
    if not allow_duplicates:
        assert report.duplicates == 0, report.line()
    return report
