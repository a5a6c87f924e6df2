"""The state of a chord's join, kept by the joiner while it holds the join records unacked (no I/O here).

Records merge by member index, so a redelivered record, a partial that repeats what the joiner holds,
or a member that reported twice never counts twice. The state of a chord is exactly what its held
records say: when the joiner compacts, it publishes a partial record and forgets the chord until the
partial comes back, so a joiner that dies leaves everything it knew in the queue for the next one.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from rabbittask.workflow import wire

DONE_REMEMBERED = 100_000  # completed chord ids kept to drop late copies of their records


@dataclass(slots=True)
class Chord:
    """One chord as its held records tell it: the start record (size, callback, ...) and the members so far."""

    id: str
    start: dict[str, Any] | None = None
    members: dict[int, dict[str, Any]] = field(default_factory=dict)
    tags: list[int] = field(default_factory=list)  # delivery tags of the records held for it
    since: float = field(default_factory=time.monotonic)  # when the oldest held record came

    @property
    def complete(self) -> bool:
        if self.start is None:
            return False
        size = int(self.start.get("size", 0))
        return len(self.members) >= size and all(i in self.members for i in range(size))

    def merge_member(self, index: int, entry: dict[str, Any]) -> None:
        known = self.members.get(index)
        if known is None or (not known.get("ok") and entry.get("ok")):  # a replayed member that succeeded wins
            self.members[index] = entry

    def failures(self) -> list[dict[str, Any]]:
        """The failed members, in order, as `on_error` receives them."""
        return [_failure(i, e) for i, e in sorted(self.members.items()) if not e.get("ok")]

    def results(self) -> list[Any]:
        """The members' results in member order; a failure record in a failed member's place."""
        size = int(self.start.get("size", 0)) if self.start else 0
        return [e.get("result") if (e := self.members[i]).get("ok") else _failure(i, e) for i in range(size)]

    def partial(self) -> dict[str, Any]:
        """The partial record that replaces every record held for this chord (compaction)."""
        return {
            "kind": "partial",
            "chord": self.id,
            "start": self.start,
            "members": [[i, e] for i, e in sorted(self.members.items())],
        }


def _failure(index: int, entry: dict[str, Any]) -> dict[str, Any]:
    return wire.failure_entry(
        str(entry.get("id", "")),
        index,
        str(entry.get("reason", "")),
        str(entry.get("exc_type", "")),
        str(entry.get("message", "")),
    )


class JoinState:
    """The chords of the records a joiner holds; `held` counts those records."""

    def __init__(self) -> None:
        self.chords: dict[str, Chord] = {}
        self.held = 0
        self.done: OrderedDict[str, None] = OrderedDict()

    def is_done(self, chord_id: str) -> bool:
        return chord_id in self.done

    def add(self, record: dict[str, Any], tag: int, reply_to: str | None = None) -> Chord:
        """Merge one held record (start, member or partial) into its chord's state; return the chord."""
        chord_id = str(record["chord"])
        chord = self.chords.get(chord_id)
        if chord is None:
            chord = self.chords[chord_id] = Chord(chord_id)
        kind = record.get("kind")
        if kind == "start":
            start = {k: v for k, v in record.items() if k not in ("v", "kind")}
            if reply_to and not start.get("reply_to"):
                start["reply_to"] = reply_to  # the caller of `.call()`: the broker wrote its reply address
            chord.start = start
        elif kind == "member":
            chord.merge_member(int(record["index"]), record)
        elif kind == "partial":
            if record.get("start") and chord.start is None:
                chord.start = record["start"]
            for index, entry in record.get("members", []):
                chord.merge_member(int(index), entry)
        chord.tags.append(tag)  # after reading it: a malformed record is dropped, not held
        self.held += 1
        return chord

    def forget(self, chord: Chord, *, done: bool = False) -> list[int]:
        """Drop a chord's state (completed, or compacted into a partial); return the tags to ack."""
        self.chords.pop(chord.id, None)
        self.held -= len(chord.tags)
        if done:
            self.done[chord.id] = None
            while len(self.done) > DONE_REMEMBERED:
                self.done.popitem(last=False)
        return chord.tags

    def held_since(self, before: float) -> list[Chord]:
        """The chords holding records that came before `before` (monotonic seconds)."""
        return [c for c in self.chords.values() if c.tags and c.since < before]

    def to_compact(self) -> list[Chord]:
        """The chords whose held records are worth replacing by one partial (those holding more than one)."""
        many = [c for c in self.chords.values() if len(c.tags) > 1]
        return many or list(self.chords.values())  # all single: rotate them so the others can come in
