"""Eager mode: every task an app sends runs at once, in the caller's process, through the worker's code.

    with app.eager():                     # or App(..., eager=True), or RABBITTASK_EAGER=1
        handle = send_email.delay("ada@example.com", "hi")
        assert handle.get() == "sent"     # or raises TaskError, as for a real worker's failure

`Eager` is a `StubBroker` that, after each send, runs its queues and jumps its clock over every
delay until nothing is left: the message is the real one (`Task.message()`: arguments validated and
JSON-encoded), decoded, validated again and run by the worker's stages (stages.py), so a value the
wire cannot carry fails as it would, `bind=True` tasks get a real `TaskContext`, retries run (their
countdowns are not slept), and a task that runs out of retries fails with "max retries exceeded".
"""

from __future__ import annotations

from rabbittask.message import Outgoing
from rabbittask.testing.stub import StubBroker


class Eager(StubBroker):
    """A `StubBroker` that runs each message as it is sent, jumping its clock over delays (see the module doc).

    `dead_letters(queue)`, `queue(name)` and the other inspections of a `StubBroker` work as well.
    """

    def send(self, msg: Outgoing) -> None:
        """Publish `msg` and run it, its retries and whatever it sends, to the end."""
        self.publish(msg)
        self.run_until_idle(advance=True)

    async def asend(self, msg: Outgoing) -> None:
        """Async twin of `send` (async tasks run on the caller's event loop)."""
        self.publish(msg)
        await self.arun_until_idle(advance=True)
