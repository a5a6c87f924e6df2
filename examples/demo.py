"""`make demo`: start a worker on examples.emails, enqueue sync and async tasks, print the results, stop.

Run with `python -m examples.demo` (the broker comes from RABBITTASK_BROKER_URL).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

from examples.emails import app, send_email, thumbnail
from rabbittask.settings import mask_url


def start_worker() -> subprocess.Popen[bytes]:
    """`rabbittask worker -A examples.emails:app`, as a user would start it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "rabbittask", "worker", "-A", "examples.emails:app", "-Q", "emails,thumbs"],
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    for raw in proc.stderr:
        line = raw.decode(errors="replace").rstrip()
        print(f"  worker | {line}")
        if "consuming from" in line:
            return proc
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise SystemExit("the worker did not start; see its log above")


async def async_part() -> None:
    handle = await thumbnail.adelay(7)
    print(f"thumbnail.adelay(7)            -> confirmed, id {handle.id}")
    results = await asyncio.gather(*(thumbnail.acall(i, size=64, timeout=10) for i in range(3)))
    print(f"3 x thumbnail.acall(i, 64)     -> {results}")
    await app.aclose()


def main() -> None:
    print(f"broker: {mask_url(app.settings.broker_url)}")
    app.declare()
    worker = start_worker()
    try:
        handle = send_email.delay("ada@example.com", "hello", "from rabbittask")
        print(f"send_email.delay(...)          -> confirmed, id {handle.id}")
        print(f"send_email.call(...)           -> {send_email.call('bob@example.com', 'hi', timeout=10)!r}")
        with app.batch():
            for i in range(100):
                send_email.delay(f"user{i}@example.com", "news")
        print("app.batch(): 100 x send_email  -> all confirmed")
        asyncio.run(async_part())
        try:
            send_email.delay(42)  # type: ignore[call-arg]
        except Exception as e:  # noqa: BLE001 - the demo shows the error a person sees
            print(f"send_email.delay(42)           -> {type(e).__name__}: {e}")
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
        for line in err.decode(errors="replace").splitlines():
            print(f"  worker | {line}")
        app.close()
    print(f"worker stopped with exit code {worker.returncode}")
    sys.exit(worker.returncode)


if __name__ == "__main__":
    main()
