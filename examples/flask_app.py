"""Flask (WSGI, threads): a view that calls `.delay()` in whichever thread serves the request.

`flask --app examples.flask_app run --with-threads` (or `python -m examples.flask_app PORT`), or any
threaded WSGI server. rabbittask keeps a publisher connection per thread (pika is not thread-safe)
and closes it when its thread ends; `.call()` shares one RPC connection across the process's threads.
"""

from __future__ import annotations

import sys

from flask import Flask, request

from examples.webtasks import add

web = Flask(__name__)


@web.post("/add")
def send_add() -> dict[str, str]:
    """Send the task; answer once the broker confirmed it."""
    handle = add.delay(int(request.args["x"]), int(request.args["y"]))
    return {"task_id": handle.id}


@web.get("/add")
def run_add() -> dict[str, int]:
    """Run the task on a worker and answer with its result."""
    return {"result": add.call(int(request.args["x"]), int(request.args["y"]), timeout=30)}


if __name__ == "__main__":
    # Werkzeug's threaded server: a thread per request, so a connection per request, closed as it ends.
    web.run(host="127.0.0.1", port=int(sys.argv[1]) if len(sys.argv) > 1 else 5000, threaded=True)
