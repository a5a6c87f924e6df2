"""Periodic tasks: a nightly report in Berlin time and a heartbeat every 30 s.

rabbittask worker -A examples.periodic:app          # runs the tasks
rabbittask beat -A examples.periodic:app            # sends them on time; start it on two hosts
rabbittask beat -A examples.periodic:app --list     # what is scheduled, and when it fires next
"""

from __future__ import annotations

from datetime import timedelta

from rabbittask import App

app = App("periodic")  # broker from RABBITTASK_BROKER_URL, default amqp://guest:guest@localhost:5672/


@app.task(queue="reports")
def nightly_report(day: str) -> str:
    """Pretend to build a report. The message id is `nightly-report@<slot>`: skip it if already done."""
    return f"report for {day}"


@app.task(queue="reports")
def heartbeat() -> None:
    """Prove the scheduler and a worker are alive."""


# 03:00 Europe/Berlin every day; DST days behave as cron does (docs/scheduling.md).
app.schedule("nightly-report", nightly_report.s(day="yesterday"), cron="0 3 * * *", tz="Europe/Berlin")
# Every 30 s; a tick no worker started within 30 s is dropped instead of running late.
app.schedule("heartbeat", heartbeat.s(), every=timedelta(seconds=30), expires=30)
