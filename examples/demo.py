"""`make demo`: start a worker, send tasks (sync, async, a batch, a retry, a dead letter), show the results, clean up.

Run with `python -m examples.demo` (the broker comes from RABBITTASK_BROKER_URL). The demo uses an exchange
of its own (`rabbittask-demo`, unless RABBITTASK_EXCHANGE says otherwise) and, when it ends, deletes every
exchange and queue it declared that did not exist before it started.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

os.environ.setdefault("RABBITTASK_EXCHANGE", "rabbittask-demo")  # before the app reads its settings

from examples.emails import app, charge, import_orders, send_email, thumbnail  # noqa: E402
from rabbittask.amqp.blocking import connect  # noqa: E402
from rabbittask.errors import TopologyMismatch  # noqa: E402
from rabbittask.ops.admin.live import exists  # noqa: E402
from rabbittask.ops.dlq import DeadLetterQueue  # noqa: E402
from rabbittask.settings import mask_url  # noqa: E402
from rabbittask.topology import ExchangeDecl, QueueDecl  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": os.getcwd()}


class Worker:
    """`rabbittask worker -A examples.emails:app`, as a user would start it; its log is shown as it comes."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rabbittask", "worker", "-A", "examples.emails:app", "-Q", "emails,thumbs"],
            stderr=subprocess.PIPE,
            env=ENV,
        )
        self.consuming = threading.Event()
        self._reader = threading.Thread(target=self._show_log, daemon=True)
        self._reader.start()
        if not self.consuming.wait(30):
            self.proc.kill()
            raise SystemExit("the worker did not start; see its log above")

    def _show_log(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            print(f"  worker | {line}", flush=True)
            if "consuming from" in line:
                self.consuming.set()

    def stop(self) -> int:
        """Warm shutdown (SIGTERM), as systemd or Kubernetes would stop it."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self._reader.join(5)
        return code


def new_objects() -> list[tuple[str, str]]:
    """The app's exchanges and queues that do not exist yet: what the demo may delete when it ends."""
    connection = connect(app.settings, "demo")
    try:
        objects = [
            ("exchange" if isinstance(d, ExchangeDecl) else "queue", d.name)
            for d in app.declarations()
            if isinstance(d, ExchangeDecl | QueueDecl)
        ]
        return [(kind, name) for kind, name in objects if not exists(connection, kind, name)]
    finally:
        connection.close()


def delete(objects: list[tuple[str, str]]) -> None:
    connection = connect(app.settings, "demo cleanup")
    try:
        channel = connection.channel()
        for kind, name in objects:
            channel.queue_delete(name) if kind == "queue" else channel.exchange_delete(name)
    finally:
        connection.close()


async def async_part() -> None:
    handle = await thumbnail.adelay(7)
    print(f"thumbnail.adelay(7)              -> confirmed, id {handle.id}")
    results = await asyncio.gather(*(thumbnail.acall(i, size=64, timeout=10) for i in range(3)))
    print(f"3 x thumbnail.acall(i, 64)       -> {results}")
    await app.aclose()


def failures() -> None:
    print(f"charge.call(42)                  -> {charge.call(42, timeout=20)!r}")  # retried once, on the broker
    try:
        import_orders.call("orders.csv", timeout=10)
    except ValueError as e:  # a TaskError that is also the remote builtin type
        print(f"import_orders.call('orders.csv') -> {type(e).__name__}: {e}")
    box = DeadLetterQueue(app.settings, "emails")
    deadline = time.monotonic() + 10
    while box.count() < 1 and time.monotonic() < deadline:  # the reply comes just before the dead letter
        time.sleep(0.05)
    listing = subprocess.run(
        [sys.executable, "-m", "rabbittask", "dlq", "ls", "-Q", "emails", "-A", "examples.emails:app"],
        capture_output=True,
        text=True,
        env={**ENV, "COLUMNS": "120"},
        check=False,
    )
    print("rabbittask dlq ls -Q emails:")
    for line in listing.stdout.splitlines():
        print(f"  {line}")


def main() -> None:
    started = time.monotonic()
    print(f"broker: {mask_url(app.settings.broker_url)}, exchange {app.settings.exchange!r}")
    created = new_objects()
    try:
        app.declare()
    except TopologyMismatch as e:
        delete(created)
        raise SystemExit(
            f"{e}\n\nThe demo declares its queues for exchange {app.settings.exchange!r} and leaves queues it did not "
            "declare alone. Delete the old ones if they are an earlier demo's (rabbitmqctl delete_queue emails, and "
            "emails.dlq, thumbs, thumbs.dlq), or run the demo on their exchange: the name before '.dlx' above, e.g. "
            "RABBITTASK_EXCHANGE=rabbittask make demo."
        ) from None
    worker = Worker()
    try:
        handle = send_email.delay("ada@example.com", "hello", "from rabbittask")
        print(f"send_email.delay(...)            -> confirmed, id {handle.id}")
        print(f"send_email.call(...)             -> {send_email.call('bob@example.com', 'hi', timeout=10)!r}")
        with app.batch():
            for i in range(10):
                send_email.delay(f"user{i}@example.com", "news")
        print("app.batch(): 10 x send_email     -> all confirmed")
        asyncio.run(async_part())
        failures()
        try:
            send_email.delay(42)  # type: ignore[call-arg]
        except Exception as e:  # noqa: BLE001 - the demo shows the error a person sees
            print(f"send_email.delay(42)             -> {type(e).__name__}: {e}")
    finally:
        time.sleep(0.3)  # the worker logs a task's line as it settles it: let the last ones show before the stop
        code = worker.stop()
        app.close()
        delete(created)
    print(f"removed what the demo declared: {len(created)} exchange(s) and queue(s)")
    print(f"worker stopped with exit code {code}; the demo took {time.monotonic() - started:.1f} s")
    sys.exit(code)


if __name__ == "__main__":
    main()
