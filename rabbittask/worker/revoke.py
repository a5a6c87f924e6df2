"""The revoke stage: a message whose task id was revoked is dead-lettered unrun (`rt-reason: revoked`).

Revocations come from the `<exchange>.revoked` stream (worker/control.py), which every child reads
from the start of the retention window before it consumes, so a task revoked while no worker ran,
or before every worker restarted, is still known. This stage runs right after the redelivery one;
`prepare()` (execute.py) checks again just before a run, for a message that waited for a thread
while the revocation came. The check is by id: a revocation names ids, so revoking a workflow is
revoking the ids of its remaining steps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiormq.abc import DeliveredMessage

from rabbittask.control.local import REVOKED
from rabbittask.worker.execute import revoked_outcome
from rabbittask.worker.outcome import Outcome

log = logging.getLogger(__name__)


class RevokeStage:
    """Admits a message unless its id is revoked; a revoked one is settled (dead-lettered) here."""

    def __init__(self, settle: Callable[[Outcome], None]) -> None:
        self._settle = settle

    def admit(self, message: DeliveredMessage) -> bool:
        """True if `message` may run; False when it was revoked (and is dead-lettered now)."""
        ids = REVOKED.ids
        if not ids:
            return True  # nothing revoked within the window: one truth test per message
        props = message.header.properties
        if props.message_id not in ids:
            return True
        log.info("task %s [%s] was revoked: dead-lettering it unrun", props.message_type, props.message_id)
        self._settle(revoked_outcome(message))
        return False
