"""A stage between outcome and settle, for workflow messages: what must be published before the ack.

A message of a workflow (header `rt-workflow`) that settles for good leads to one more message:

* a chain step that succeeded, with steps after it: the next step, its result first in the arguments
  (unless the step is immutable), carrying the remaining steps, the chord marker, `reply_to` and
  `correlation_id`; the step itself does not reply (the last one does);
* the end of a chord member (its last step succeeded, or any step failed for good): a report to the
  join queue with its index and outcome (reports.py coalesces those of a burst into one record).

The settler publishes it confirmed **before** acking the message, so a crash in between gives a repeat
with the same id (fixed at build time), never a lost step. A retry (through the delay ladder) and a
replay from the dead-letter queue carry the same body, so they continue the workflow as well.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic_core import PydanticSerializationError

from rabbittask.errors import PayloadError, RabbitTaskError
from rabbittask.message import Outgoing
from rabbittask.worker.outcome import Outcome, Reason, Settlement
from rabbittask.workflow import wire

if TYPE_CHECKING:
    from aiormq.abc import DeliveredMessage

    from rabbittask.app import App
    from rabbittask.worker.reports import Reports

log = logging.getLogger(__name__)


def is_workflow(message: DeliveredMessage) -> bool:
    """True for a message of a workflow (the hot path asks this of every success: one dict lookup)."""
    headers = message.header.properties.headers
    return bool(headers) and wire.H_WORKFLOW in headers  # type: ignore[operator]


@dataclass(frozen=True, slots=True)
class Plan:
    """What to publish, confirmed, before the ack: messages, or a chord report `(chord id, entry)`.

    `continues`: a next step replies instead of this one.
    """

    messages: list[Outgoing]
    continues: bool
    what: str
    report: tuple[str, bytes] | None = None


class Followup:
    """Plans the next step or the join record of a workflow message's outcome."""

    def __init__(self, app: App, reports: Reports) -> None:
        self.app = app
        self.reports = reports

    def plan(self, outcome: Outcome) -> tuple[Outcome, Plan | None]:
        """The plan for `outcome` (None: nothing to send); an outcome whose result cannot travel becomes a failure."""
        reason = outcome.reason
        if reason is not None and reason.settlement is not Settlement.DEAD_LETTER:
            return outcome, None  # retried, re-parked, duplicate, handed back: not settled for good
        flow = wire.flow_of(outcome.message.body)
        if outcome.ok and flow.chain:
            try:
                return outcome, Plan([self._next(outcome, flow)], True, "next step")
            except PayloadError as e:
                outcome = outcome._replace(reason=Reason.NOT_SERIALISABLE, exc_type="PayloadError", exc_message=str(e))
            except RabbitTaskError as e:  # an option this worker's app cannot honour: dead-lettered, saying so
                message = f"the next step could not be sent: {e}"
                outcome = outcome._replace(reason=Reason.FAILED, exc_type=type(e).__name__, exc_message=message)
        if flow.chord is None:
            return outcome, None
        try:
            entry = self._entry(outcome, flow.chord)
        except (PayloadError, PydanticSerializationError, TypeError) as e:
            outcome = outcome._replace(reason=Reason.NOT_SERIALISABLE, exc_type="TypeError", exc_message=str(e))
            entry = self._entry(outcome, flow.chord)
        return outcome, Plan([], False, "chord report", (str(flow.chord["id"]), entry))

    def _next(self, outcome: Outcome, flow: wire.Flow) -> Outgoing:
        props = outcome.message.header.properties
        headers = props.headers or {}
        spec = flow.chain[0]
        rest = wire.Flow(flow.chain[1:], flow.chord)
        return wire.step_message(
            self.app,
            spec,
            [outcome.value],
            rest,
            str(headers.get(wire.H_WORKFLOW, "")),
            reply_to=props.reply_to,
            correlation_id=props.correlation_id,
        )

    def _entry(self, outcome: Outcome, chord: dict[str, Any]) -> bytes:
        """The member's report, encoded: its result, or why it failed for good."""
        index = int(chord.get("index", -1))
        member: dict[str, Any] = {"id": outcome.message_id}
        if outcome.ok:
            member.update(ok=True, result=outcome.value)
        else:
            reason = outcome.reason.value if outcome.reason is not None else ""
            member.update(ok=False, reason=reason, exc_type=outcome.exc_type, message=outcome.exc_message[:1000])
        entry = self.reports.entry(index, member)
        if len(entry) > self.app.settings.max_payload_bytes:
            raise PayloadError(f"its result is {len(entry)} bytes, above max_payload_bytes")
        return entry
