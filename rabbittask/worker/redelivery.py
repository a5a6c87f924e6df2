"""Before a message runs: is it expired, not due yet, delivered too often, or a run this child already has?

`Redeliveries.admit` is the one check the consume callback makes. A first delivery without
`rt-expires`/`rt-eta` pays one flag test and at most two dict lookups; everything else here runs only
for messages that are redelivered or scheduled.

Delivery counting, why here: a message that kills its worker (segfault, OOM kill, `os._exit`) is
never settled and comes back forever. Quorum queues count deliveries (`x-delivery-count`, the
returns so far) and the broker dead-letters past `x-delivery-limit`; the worker dead-letters one
delivery earlier, on the delivery after `delivery_limit` unsettled ones, so the copy in the DLQ
carries rabbittask's reason headers (the broker's limit stays the backstop). Classic queues keep
no count: a redelivered message is re-published (through the ladder's 100 ms level) to the back
of its queue with the count in `rt-delivery-count` (confirmed, then the original acked), and
dead-lettered once the count reaches the queue's `delivery_limit`. Either way a message is
started at most `delivery_limit` times.

On quorum queues, the messages a dying child held but had not started are counted too. With the
supervisor's running markers (running.py), a quorum message at the limit is dead-lettered only if
it was running when a child died; one that never was runs (the broker's limit stays the backstop).

Runs that outlive their channel: when the broker closes a channel while a task runs
(`consumer_timeout`'s 406, a lost connection), it requeues the message and, once the child consumes
again, often delivers it straight back to the same child while the first run goes on. Running it
again would repeat the work and, for a task longer than `consumer_timeout`, be cut off again,
delivery after delivery. So a child that gets a redelivery of a message it is still running (or
finished after its channel closed) holds the new delivery and settles it with that run's outcome,
on the new channel (`Orphans`). A redelivery that reaches another child or worker runs there: one
extra run at most per hand-over.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from aiormq.abc import DeliveredMessage

from rabbittask.delays import DELAY_BASE_MS
from rabbittask.errors import PayloadError
from rabbittask.message import H_DELIVERY_COUNT, H_ETA, H_EXPIRES, X_DELIVERY_COUNT, format_time, header_time
from rabbittask.worker.execute import source_queue
from rabbittask.worker.outcome import Outcome, Reason, Republish
from rabbittask.worker.running import RunningMarkers

if TYPE_CHECKING:
    from rabbittask.app import App

log = logging.getLogger(__name__)

KEEP_OUTCOMES = 256  # finished orphans whose redelivery has not come (yet): it may go to another worker


class Redeliveries:
    """Screens messages before they run, and keeps what a child knows of redeliveries: markers and orphans.

    `settle` settles what is not run; `running_here` lists the messages this child runs or has run but
    not settled yet (a redelivery of one of them waits for that run instead of running again).
    """

    def __init__(
        self,
        app: App,
        settle: Callable[[Outcome], None],
        running_here: Callable[[], Iterable[DeliveredMessage]],
        markers: RunningMarkers | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`clock` says what time it is (epoch seconds): `StubBroker` passes its virtual clock."""
        self.app = app
        self.markers = markers
        self.clock = clock
        # Ids of admitted redeliveries, marked as running while they run (see running.py). Empty unless
        # redeliveries run, so that a run tests one set for truth and does nothing more.
        self.marked: set[str] = set()
        self.orphans = Orphans()
        self._settle = settle
        self._running_here = running_here

    def admit(self, message: DeliveredMessage) -> bool:
        """True to run `message` now; False when it was settled unrun, or waits for a run of it here."""
        headers = message.header.properties.headers
        redelivered = message.delivery.redelivered  # type: ignore[union-attr]
        if not redelivered and not (headers and (H_EXPIRES in headers or H_ETA in headers)):
            return True  # the hot path's whole cost: a flag and, on messages with headers, two dict lookups
        if redelivered and self._rerun_of_own(message):
            return False
        message_id = message.header.properties.message_id or ""
        held = admit(self.app, message, now=self.clock(), markers=self.markers)
        if held is not None:
            if self.markers is not None:
                self.markers.done(message_id)
            self._settle(held)
            return False
        if redelivered and self.markers is not None:
            self.marked.add(message_id)
        return True

    def start(self, message: DeliveredMessage) -> str | None:
        """Before a run, when `marked` is not empty: mark it if it is a redelivery; the id for `ended`, or None."""
        message_id = message.header.properties.message_id or ""
        if message_id in self.marked and self.markers is not None:
            self.markers.start(message_id)
            return message_id
        return None

    def ended(self, message_id: str) -> None:
        """At the end of the run, not at its settling: a child killed between the two (acks are coalesced)
        did not die running this message, which then comes back and runs once more."""
        if self.markers is not None:
            self.markers.done(message_id)

    def settled(self, message: DeliveredMessage) -> None:
        """`message` is settled (called when `marked` is not empty): forget its mark."""
        message_id = message.header.properties.message_id or ""
        if message_id in self.marked and self.markers is not None:
            self.marked.discard(message_id)
            self.markers.done(message_id)

    def orphaned(self, outcome: Outcome) -> Outcome | None:
        """A run ended after its channel closed: the outcome for its waiting redelivery, or None (kept for one)."""
        if not outcome.message.header.properties.message_id:
            return None
        return self.orphans.finished(outcome)

    def _rerun_of_own(self, message: DeliveredMessage) -> bool:
        """True if `message` redelivers a run here whose channel closed: settled with its outcome, not rerun."""
        message_id = message.header.properties.message_id
        if not message_id:
            return False
        outcome = self.orphans.outcome_for(message)
        if outcome is not None:
            log.info(
                "task %s [%s] came back after it finished here: acking it with that run's outcome",
                outcome.task_name,
                message_id,
            )
            self._settle(outcome)
            return True
        for running in self._running_here():
            if running.channel is not message.channel and running.header.properties.message_id == message_id:
                log.info(
                    "task %s [%s] came back while it still runs here: not running it twice",
                    running.header.properties.message_type,
                    message_id,
                )
                self.orphans.wait(message)
                return True
        return False


class Orphans:
    """Redeliveries waiting for a run of their message, and outcomes of runs whose channel closed."""

    def __init__(self) -> None:
        self._waiting: dict[str, DeliveredMessage] = {}
        self._outcomes: OrderedDict[str, Outcome] = OrderedDict()

    def outcome_for(self, message: DeliveredMessage) -> Outcome | None:
        """The outcome of an earlier run of `message` that finished after its channel closed, now for `message`."""
        outcome = self._outcomes.pop(message.header.properties.message_id or "", None)
        return None if outcome is None else outcome._replace(message=message)

    def wait(self, message: DeliveredMessage) -> None:
        """Hold `message` (a redelivery) until the run of the same message still going here ends."""
        self._waiting[message.header.properties.message_id or ""] = message

    def finished(self, outcome: Outcome) -> Outcome | None:
        """A run ended after its channel closed: its outcome for the waiting redelivery, or None (kept for one)."""
        waiting = self._waiting.pop(outcome.message_id, None)
        if waiting is not None:
            return outcome._replace(message=waiting)
        self._outcomes[outcome.message_id] = outcome
        if len(self._outcomes) > KEEP_OUTCOMES:
            self._outcomes.popitem(last=False)
        return None


def admit(
    app: App, message: DeliveredMessage, now: float | None = None, markers: RunningMarkers | None = None
) -> Outcome | None:
    """None to run the message now; else the outcome that settles it without running."""
    props = message.header.properties
    headers: dict[str, Any] = props.headers or {}
    name = props.message_type or ""
    now = time.time() if now is None else now
    try:
        expires, eta = header_time(headers, H_EXPIRES), header_time(headers, H_ETA)
    except PayloadError as e:  # a deadline or due time that cannot be read must not fail open
        return Outcome(message, name, reason=Reason.MALFORMED, exc_type=type(e).__name__, exc_message=str(e))
    if expires is not None and now >= expires:
        return Outcome(
            message,
            name,
            reason=Reason.EXPIRED,
            exc_message=f"expired at {format_time(expires)}, {now - expires:.3f} s before a worker got it",
        )
    if eta is not None and eta > now:
        # Due later than one pass of the delay ladder reaches (or a producer set rt-eta itself).
        return Outcome(message, name, reason=Reason.NOT_DUE, republish=Republish(eta - now, {}))
    if getattr(message.delivery, "redelivered", False):
        return _count_delivery(app, message, headers, name, markers)
    return None


def _count_delivery(
    app: App, message: DeliveredMessage, headers: dict[str, Any], name: str, markers: RunningMarkers | None
) -> Outcome | None:
    spec = app.queues.get(source_queue(app, message))
    limit = app.settings.delivery_limit if spec is None else spec.delivery_limit
    if limit is None:
        return None
    classic = spec is not None and spec.queue_type == "classic"
    if classic:
        count = headers.get(H_DELIVERY_COUNT, 0)
        count = (count if isinstance(count, int) else 0) + 1
    else:
        count = headers.get(X_DELIVERY_COUNT, 0)
        if not isinstance(count, int):
            return None
        if (
            count >= limit
            and markers is not None
            and not markers.died_running(message.header.properties.message_id or "")
        ):
            log.info(
                "task %s [%s] was delivered %d time(s) unsettled but never died running here: running it (it came "
                "back with a message that killed its child?)",
                name,
                message.header.properties.message_id,
                count,
            )
            return None
    if count >= limit:
        return Outcome(
            message,
            name,
            reason=Reason.DELIVERY_LIMIT,
            exc_message=(
                f"delivered {count} time(s) without being settled (limit {limit}): the worker running it "
                "died, was killed or lost its connection each time"
            ),
        )
    if classic:
        # Through the ladder's shortest level, so the copy cannot reach a worker (and kill it, maybe)
        # before the ack of this delivery is on the wire: else both would come back, uncounted.
        pause = Republish(DELAY_BASE_MS / 1000, {H_DELIVERY_COUNT: count})
        return Outcome(message, name, reason=Reason.REDELIVERED, republish=pause)
    return None
