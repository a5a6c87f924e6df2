"""The revoke stage: a message whose task id was revoked is dead-lettered unrun (`rt-reason: revoked`).

Revocations come from the `<exchange>.revoked` stream (worker/control.py), which every child reads
from the start of the retention window before it consumes, so a task revoked while no worker ran,
or before every worker restarted, is still known. This stage runs right after the redelivery one;
`prepare()` (execute.py) checks again just before a run, for a message that waited for a thread
while the revocation came. While the control connection is down, a message waits here until the
revocations are read again (catchup.py). The check is by id: a revocation names ids, so revoking a
workflow is revoking the ids of its remaining steps.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiormq.abc import DeliveredMessage

from rabbittask.control.local import REVOKED
from rabbittask.worker.catchup import CatchUp
from rabbittask.worker.execute import revoked_outcome
from rabbittask.worker.outcome import Outcome

log = logging.getLogger(__name__)


class RevokeStage:
    """Admits a message unless its id is revoked; a revoked one is settled (dead-lettered) here."""

    def __init__(
        self,
        settle: Callable[[Outcome], None],
        hand_back: Callable[[DeliveredMessage], None],
        handing_back: asyncio.Event,
        catch_up: CatchUp | None = None,
    ) -> None:
        self._settle, self._hand_back, self._handing_back = settle, hand_back, handing_back
        self._catch_up = catch_up  # None: no control plane, no revocations to wait for

    async def read_first(self, stopping: asyncio.Event) -> None:
        """Before a session consumes: wait until the revocations of the window are read (or a stop)."""
        if self._catch_up is not None:
            await self._catch_up.wait(stopping)

    def caught_up(self) -> bool:
        """True when every revocation of the window is read (catchup.py): one truth test per message."""
        return self._catch_up is None or self._catch_up.done.is_set()

    async def wait(self, message: DeliveredMessage) -> bool:
        """Wait until the revocations are read again (the control connection was lost); False if handed back."""
        assert self._catch_up is not None
        await self._catch_up.wait(self._handing_back)
        if self._handing_back.is_set():
            self._hand_back(message)
            return False
        return True

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
