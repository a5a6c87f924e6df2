"""Whether a child has read every revocation of the window, and its tasks may run (control.py, revoke.py).

The control connection reads the `<exchange>.revoked` stream from the start of the window and
appends a marker of its own; when the marker comes back, everything revoked before it was read
(`read()`). Until then, at start and again after the control connection was lost, tasks wait
(`wait()`). Not for long: when the marker is not back within `WAIT_S` and nothing came for
`QUIET_GAP_S` (the connection is not back yet; the broker holds publishes during an alarm; the
stream's node is restarting after a crash), the window is taken as read, said in the log.
Revocations read later still apply as they arrive.
"""

from __future__ import annotations

import asyncio
import logging
import time

from rabbittask.control.local import REVOKED

log = logging.getLogger(__name__)

WAIT_S = 5.0  # marker not back this long, the stream quiet for QUIET_GAP_S: take what was read
QUIET_GAP_S = 1.0


class CatchUp:
    """`done` once the revocations of the window are read; cleared when the control connection is lost."""

    def __init__(self) -> None:
        self.done = asyncio.Event()
        self.trouble = ""  # why the control connection failed last, for the log
        self._reading = False  # the current connection reads the stream
        self._last_record = time.monotonic()
        self._watch: asyncio.Task[None] | None = None

    def reading(self) -> None:
        """The stream is being read from the start of the window, on a new connection."""
        self._reading, self._last_record = True, time.monotonic()

    def record(self) -> None:
        """A record of the stream came."""
        self._last_record = time.monotonic()

    def read(self, count: int, window_s: float) -> None:
        """This child's marker came back: every revocation of the window is read."""
        if not self.done.is_set():
            log.info("read %d revocation(s) of the last %g s", count, window_s)
            self.done.set()

    def lost(self) -> None:
        """The control connection is gone: revocations made from now on are not read until it is back."""
        was_reading, self._reading = self._reading, False
        if was_reading and self.done.is_set():  # not again for each refused reconnect
            log.warning("control connection lost: tasks wait until the revocations are read again")
            self.done.clear()

    async def wait(self, stopping: asyncio.Event) -> None:
        """Wait until `done` (or `stopping` is set)."""
        if self.done.is_set():
            return
        if self._watch is None or self._watch.done():
            self._watch = asyncio.ensure_future(self._watch_over())
        up, stop = asyncio.ensure_future(self.done.wait()), asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait([up, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            up.cancel()
            stop.cancel()

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()

    async def _watch_over(self) -> None:
        """Until done: take the window as read once `WAIT_S` passed and the stream is quiet."""
        started = time.monotonic()
        while not self.done.is_set():
            await asyncio.sleep(0.05)
            now = time.monotonic()
            if now - started >= WAIT_S and now - self._last_record >= QUIET_GAP_S:
                if self._reading:
                    why = self.trouble or "its marker did not come back: does the broker hold publishes (an alarm)?"
                else:
                    why = f"no control connection: {self.trouble or 'connecting'}"
                self._give_up(f"could not all be read within {WAIT_S:.0f} s", why)

    def _give_up(self, what: str, why: str) -> None:
        log.warning(
            "the revocations of the window %s (%s); taking tasks with the %d read so far: the others apply as they "
            "are read",
            what,
            why,
            len(REVOKED),
        )
        self.done.set()
