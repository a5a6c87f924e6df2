"""`make demo` as a person runs it: its own virtualenv (no test tooling), a worker, every outcome, a clean broker.

The first run builds `.venv-demo` (the package without extras, about 20 s); later runs reuse it.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator

import pika
import pika.exceptions
import pytest

from tests.vhosts import own_vhost
from tests.workers import ROOT, worker_env

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


@pytest.fixture
def demo_broker(broker_url: str) -> Iterator[str]:
    """A vhost of its own where one can be made: the demo's queue names are fixed (`emails`, `thumbs`)."""
    with own_vhost(broker_url, "rt-demo") as url:
        yield url or broker_url


@pytest.mark.timeout(300)
def test_make_demo_shows_successes_a_retry_and_a_dead_letter_and_removes_what_it_declared(demo_broker: str) -> None:
    broker_url = demo_broker
    done = subprocess.run(
        ["make", "demo", f"RABBITTASK_BROKER_URL={broker_url}"],
        cwd=ROOT,
        env=worker_env(broker_url),
        capture_output=True,
        text=True,
        timeout=280,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    # What the producer side shows
    assert "send_email.call(...)             -> \"sent 'hi' to bob@example.com\"" in out
    assert "3 x thumbnail.acall(i, 64)       -> [{'image_id': 0, 'size': 64}" in out
    assert "app.batch(): 10 x send_email     -> all confirmed" in out
    assert "charge.call(42)                  -> 'order 42 charged on attempt 2'" in out
    assert "import_orders.call('orders.csv') -> TaskError[ValueError]: ValueError: orders.csv: line 3" in out
    assert "ArgumentsInvalid: invalid arguments for task 'examples.emails.send_email'" in out
    # What the worker's log shows: its banner, a success, the retry with its time, the dead letter with why
    assert "rabbittask.worker: rabbittask " in out and "  worker |     emails  quorum, delivery limit 20" in out
    assert re.search(rf"INFO .* task examples.emails.send_email \[{UUID}\] succeeded in \d", out)
    assert re.search(
        rf"INFO .* task examples.emails.charge \[{UUID}\] raised ConnectionError: payment gateway timed out; "
        r"attempt 2 in [\d.]+ s \(at \d\d:\d\d:\d\d\)",
        out,
    )
    assert re.search(rf"INFO .* task examples.emails.charge \[{UUID}\] succeeded in", out)
    assert re.search(
        rf"ERROR .* task examples.emails.import_orders \[{UUID}\] failed after .* \(task raised\): ValueError: "
        "orders.csv: line 3: price 'abc' is not a number; dead-lettered to emails.dlq",
        out,
    )
    assert "examples.emails.import_orders │ task raised: ValueError │        1" in out  # `rabbittask dlq ls`
    # And it leaves nothing behind
    assert re.search(r"removed what the demo declared: \d+ exchange\(s\) and queue\(s\)", out)
    assert "worker stopped with exit code 0" in out
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        for kind, name in [("queue", "emails"), ("queue", "emails.dlq"), ("exchange", "rabbittask-demo.delay")]:
            channel = connection.channel()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker):  # 404: gone
                if kind == "queue":
                    channel.queue_declare(name, passive=True)
                else:
                    channel.exchange_declare(name, passive=True)
    finally:
        connection.close()
    seconds = float(re.search(r"the demo took ([\d.]+) s", out).group(1))  # type: ignore[union-attr]
    assert seconds < 30
