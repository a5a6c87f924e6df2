"""The tasks of the web examples (examples/fastapi_app.py, examples/flask_app.py).

Start their worker with `rabbittask worker -A examples.webtasks:app` from the repository's root.
"""

from __future__ import annotations

from rabbittask import App

app = App("web")  # the broker: RABBITTASK_BROKER_URL


@app.task(queue="web")
def add(x: int, y: int) -> int:
    return x + y


@app.task(queue="web")
async def shout(text: str) -> str:
    return text.upper() + "!"
