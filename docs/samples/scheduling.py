# Periodic tasks (docs/scheduling.md). List them: rabbittask beat -A scheduling:app --list
from datetime import timedelta

from rabbittask import App

app = App("shop")


# --8<-- [start:schedules]
@app.task(queue="reports")
def report(day: str) -> str:
    return f"report for {day}"


@app.task(queue="default")
def ping() -> None:
    pass


app.schedule("nightly-report", report.s(day="yesterday"), cron="0 3 * * *", tz="Europe/Berlin")
app.schedule("ping", ping.s(), every=timedelta(seconds=30), expires=30)
app.schedule(
    "hourly-report",
    report,
    cron="5 * * * *",
    kwargs={"day": "today"},
    queue="urgent",
    catch_up="all",
    catch_up_limit=24,
)
# --8<-- [end:schedules]
