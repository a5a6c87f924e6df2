"""The fuzz harness: any message a producer could send, through the worker's own stages, judged by one invariant.

`Judge.check(body, props)` publishes one message (its properties through pamqp's wire codec, as a
consumer gets them) into a `StubBroker` task queue and runs the worker's stages on it: admission
(`rt-expires`, `rt-eta`, delivery counts), decoding, validation, the run and the settle. The
invariant, for every input:

* nothing raises out of the stages (in a child, that would kill the consume callback or the child);
* the message is settled: it ran (its task recorded it), or it is in the dead-letter queue with an
  `rt-reason`, or it waits in the delay ladder (a due time still ahead); never left in its queue or unacked;
* a message that did not run never ran in part, and the next good message runs.

The hypothesis tests (test_decoder_fuzz.py), the coverage-guided run (atheris_decoder.py) and the
real-worker property test share it, so a bug one finds is a case for the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from pamqp.commands import Basic

from rabbittask import App, TaskContext
from rabbittask.message import H_REASON
from rabbittask.testing import StubBroker

QUEUE = "fuzz"
GOOD_BODY = b'{"v":1,"args":[1],"kwargs":{}}'


def make_app(
    queue: str = QUEUE, exchange: str = "rabbittask", record: Callable[[str, str], None] | None = None
) -> tuple[App, list[tuple[str, str]]]:
    """An app with one sync and one async task on `queue`; each run is recorded (task, message id).

    The list collects the runs; `record`, if given, is called too (the real-worker test writes a file).
    """
    # No broker URL: a real worker takes RABBITTASK_BROKER_URL; the stub broker connects to nothing.
    app = App("fuzz", exchange=exchange, delivery_limit=5)
    ran: list[tuple[str, str]] = []

    def note(name: str, ctx: TaskContext) -> None:
        ran.append((name, ctx.id))
        if record is not None:
            record(name, ctx.id)

    @app.task(queue=queue, name="fuzz.sync", bind=True)
    def sync_task(ctx: TaskContext, a: int, b: str = "", c: list[int] | None = None) -> int:
        note("fuzz.sync", ctx)
        return a

    @app.task(queue=queue, name="fuzz.async", bind=True)
    async def async_task(ctx: TaskContext, a: int, b: dict[str, int] | None = None) -> int:
        note("fuzz.async", ctx)
        return a

    return app, ran


@dataclass
class Verdict:
    """How one message ended."""

    ran: bool
    dead_reason: str | None = None
    scheduled: bool = False
    notes: list[str] = field(default_factory=list)


class Judge:
    """One stub broker for many cases; `check` raises `AssertionError` when the invariant breaks."""

    def __init__(self) -> None:
        self.app, self.ran = make_app()
        self.stub = StubBroker(self.app).start()
        self.loop = asyncio.new_event_loop()  # one loop for every case: a loop per case would cost more than the case
        self.cases = 0
        # Each bad case logs a warning (as a worker does); a hundred thousand of them would only slow the run.
        logging.getLogger("rabbittask").setLevel(logging.CRITICAL)

    def close(self) -> None:
        self.loop.close()
        self.stub.stop()
        self.app.close()

    def check(self, body: bytes, props: Basic.Properties) -> Verdict:
        """Run one message through the stages and judge it; then prove the next good message runs."""
        self.cases += 1
        verdict = self._one(body, props)
        good = Basic.Properties(
            content_type="application/json", message_id=f"good-{self.cases}", message_type="fuzz.sync"
        )
        after = self._one(GOOD_BODY, good)
        assert after.ran and after.dead_reason is None, f"the good message after the fuzzed one did not run: {after}"
        return verdict

    def _one(self, body: bytes, props: Basic.Properties) -> Verdict:
        stub = self.stub
        self.ran.clear()
        for queue in stub.vhost.queues.values():  # each case starts on an empty broker: its verdict is its own
            queue.messages.clear()
        stub._unacked.clear()
        routed = stub.route(self.app.settings.exchange, QUEUE, body, props, mandatory=True)
        assert routed == "routed", routed
        # Raises what escapes the stages (in a child, the consume callback's crash).
        self.loop.run_until_complete(stub.arun_until_idle(queues=[QUEUE], max_deliveries=20))
        assert not stub.queue(QUEUE), "a message was left in its queue"
        assert not stub._unacked, "a message was left unacked"
        dead = stub.dead_letters(QUEUE)
        scheduled = stub.scheduled(QUEUE)
        assert len(dead) + len(scheduled) <= 1, (dead, scheduled)
        reason = None
        if dead:
            headers = dead[0].properties.headers or {}
            reason = headers.get(H_REASON)
            assert isinstance(reason, str) and reason, f"dead-lettered without a reason: {headers}"
        if self.ran:
            assert reason in (None, "task raised", "max retries exceeded", "result not JSON-serialisable"), reason
        else:
            assert dead or scheduled, "the message neither ran, nor was dead-lettered, nor waits in the ladder"
        return Verdict(bool(self.ran), reason, bool(scheduled))
