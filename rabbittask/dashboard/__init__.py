"""`rabbittask dashboard`: a web page of live workers, queues, task rates, failures and dead letters,
active tasks (revoke), rate limits, delayed retries and schedules.

Needs the `dashboard` extra (Starlette and uvicorn). The pieces:

    history.py   what the dashboard heard on the events exchange: heartbeats, per-minute counts, failures
    monitor.py   the AMQP side: consumes events into a History, reads queue depths
    auth.py      token / basic auth, sessions and CSRF tokens
    waiting.py   from task events: retries waiting with due times, schedules' last ticks, runs per second
    plane.py     the views over app.control: active tasks, revoke (and terminate), rate limits
    web.py       the Starlette app: the page, its JSON endpoints, DLQ replay and purge
    static/      the page's script and style, and uPlot (vendored, MIT, see uPlot.LICENSE)
"""
