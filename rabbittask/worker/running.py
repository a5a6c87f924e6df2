"""Markers of redelivered messages while they run: was a message at its delivery limit a killer, or a bystander?

A message that kills the child running it (segfault, OOM kill, `os._exit`) comes back, and so does
every message that child held but had not started: a quorum queue counts a delivery against each of
them. Dead-lettering all of them at the delivery limit would punish a poison message's neighbours,
which never ran. So before a child starts a message that was delivered before, it creates a marker
file named after the message in a directory its supervisor shares with all its children, and removes
it when the run ends (not when it is acked: a child killed in between did not die running it). A
marker still there when the message comes back means it was running when its child died. At the
limit, the worker dead-letters a message with a marker and runs one without (it came back with
others' runs; the broker's `x-delivery-limit` stays the backstop).

Only redelivered messages pay (one file created, one removed); first deliveries are not marked,
which the rule allows for: deliveries 2 to the limit of a poison message all leave markers. Markers
belong to one supervisor: a message that killed children of another worker is not known here and
may run once more, until the broker's own limit dead-letters it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path


class RunningMarkers:
    """The marker directory one supervisor shares with its children."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def _path(self, message_id: str) -> Path:
        # Ids come from any producer: hashed, they make safe, short file names.
        return self.directory / hashlib.sha1(message_id.encode(), usedforsecurity=False).hexdigest()

    def start(self, message_id: str) -> None:
        """Mark `message_id` as running (before it starts)."""
        with contextlib.suppress(OSError):  # no marker: at worst the limit counts this run as before
            self._path(message_id).touch()

    def done(self, message_id: str) -> None:
        """The run of `message_id` ended (or it will not run): remove its marker."""
        with contextlib.suppress(OSError):
            self._path(message_id).unlink()

    def died_running(self, message_id: str) -> bool:
        """True if a child died while running `message_id` before (a run that ended removed its marker)."""
        return self._path(message_id).exists()
