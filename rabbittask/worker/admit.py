"""Before a message runs: is it expired, not due yet, or delivered too often without finishing?

The child calls `admit` only for a message that is redelivered or carries `rt-expires`/`rt-eta`
(`needs_admission`, inlined in the consume callback), so the common first delivery pays one flag
test and at most two dict lookups for these checks.

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
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from aiormq.abc import DeliveredMessage

from rabbittask.message import H_DELIVERY_COUNT, H_ETA, H_EXPIRES, X_DELIVERY_COUNT, format_time, parse_time
from rabbittask.topology import DELAY_BASE_MS
from rabbittask.worker.execute import (
    REASON_DELIVERY_LIMIT,
    REASON_EXPIRED,
    REASON_NOT_DUE,
    REASON_REDELIVERED,
    Outcome,
    Republish,
    source_queue,
)
from rabbittask.worker.running import RunningMarkers

if TYPE_CHECKING:
    from rabbittask.app import App

log = logging.getLogger(__name__)


def needs_admission(message: DeliveredMessage) -> bool:
    """True if `admit` has something to check (the hot path's whole cost)."""
    headers = message.header.properties.headers
    return bool(headers and (H_EXPIRES in headers or H_ETA in headers)) or bool(
        message.delivery.redelivered  # type: ignore[union-attr]
    )


def admit(
    app: App, message: DeliveredMessage, now: float | None = None, markers: RunningMarkers | None = None
) -> Outcome | None:
    """None to run the message now; else the outcome that settles it without running."""
    props = message.header.properties
    headers: dict[str, Any] = props.headers or {}
    name = props.message_type or ""
    now = time.time() if now is None else now
    expires = parse_time(headers.get(H_EXPIRES))
    if expires is not None and now >= expires:
        return Outcome(
            message,
            name,
            reason=REASON_EXPIRED,
            exc_message=f"expired at {format_time(expires)}, {now - expires:.3f} s before a worker got it",
        )
    eta = parse_time(headers.get(H_ETA))
    if eta is not None and eta > now:
        # Due later than one pass of the delay ladder reaches (or a producer set rt-eta itself).
        return Outcome(message, name, reason=REASON_NOT_DUE, republish=Republish(eta - now, {}))
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
            reason=REASON_DELIVERY_LIMIT,
            exc_message=(
                f"delivered {count} time(s) without being settled (limit {limit}): the worker running it "
                "died, was killed or lost its connection each time"
            ),
        )
    if classic:
        # Through the ladder's shortest level, so the copy cannot reach a worker (and kill it, maybe)
        # before the ack of this delivery is on the wire: else both would come back, uncounted.
        pause = Republish(DELAY_BASE_MS / 1000, {H_DELIVERY_COUNT: count})
        return Outcome(message, name, reason=REASON_REDELIVERED, republish=pause)
    return None
