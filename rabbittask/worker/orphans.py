"""Runs that outlive their channel: a redelivery of one is settled with its outcome, not run again.

When the broker closes a channel while a task runs (`consumer_timeout`'s 406, a lost connection), it
requeues the message and, once the child consumes again, often delivers it straight back to the
same child while the first run goes on. Running it again would repeat the work and, for a task
longer than `consumer_timeout`, be cut off again, delivery after delivery. So a child that gets a
redelivery of a message it is still running (or finished after its channel closed) holds the new
delivery and settles it with that run's outcome, on the new channel. Only redeliveries look here.
A redelivery that reaches another child or worker runs there: one extra run at most per hand-over.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

from aiormq.abc import DeliveredMessage

from rabbittask.worker.execute import Outcome

KEEP_OUTCOMES = 256  # finished orphans whose redelivery has not come (yet): it may go to another worker


class Orphans:
    """Redeliveries waiting for a run of their message, and outcomes of runs whose channel closed."""

    def __init__(self) -> None:
        self._waiting: dict[str, DeliveredMessage] = {}
        self._outcomes: OrderedDict[str, Outcome] = OrderedDict()

    def outcome_for(self, message: DeliveredMessage) -> Outcome | None:
        """The outcome of an earlier run of `message` that finished after its channel closed, now for `message`."""
        outcome = self._outcomes.pop(message.header.properties.message_id or "", None)
        return None if outcome is None else dataclasses.replace(outcome, message=message)

    def wait(self, message: DeliveredMessage) -> None:
        """Hold `message` (a redelivery) until the run of the same message still going here ends."""
        self._waiting[message.header.properties.message_id or ""] = message

    def finished(self, outcome: Outcome) -> Outcome | None:
        """A run ended after its channel closed: its outcome for the waiting redelivery, or None (kept for one)."""
        waiting = self._waiting.pop(outcome.message_id, None)
        if waiting is not None:
            return dataclasses.replace(outcome, message=waiting)
        self._outcomes[outcome.message_id] = outcome
        if len(self._outcomes) > KEEP_OUTCOMES:
            self._outcomes.popitem(last=False)
        return None
