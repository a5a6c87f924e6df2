"""WorkflowHandle: what `chain(...).delay()`, `group(...).delay()` and `chord(...).delay()` return."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rabbittask.handle import TaskHandle


@dataclass(frozen=True, slots=True)
class WorkflowHandle:
    """The handles of every step of a workflow, known before any ran (their ids are fixed at build time).

    `steps`: a chain's steps in order (for a group or chord, the members). `final`: the handle whose
    result is the workflow's (a chain's last step, a chord's callback); None for a group. `members`: a
    group's or chord's members, in order. With a result backend, `get()` waits for the final result (a
    group: the list of the members' results, in order).
    """

    id: str
    steps: list[TaskHandle[Any]]
    final: TaskHandle[Any] | None
    members: list[TaskHandle[Any]] = field(default_factory=list)
    on_error: TaskHandle[Any] | None = None

    def get(self, timeout: float | None = None, *, propagate: bool = True) -> Any:
        """Wait for the workflow's result (needs a result backend): the final step's, or a group's list."""
        if self.final is not None:
            return self.final.get(timeout, propagate=propagate)
        return [member.get(timeout, propagate=propagate) for member in self.members]

    async def aget(self, timeout: float | None = None, *, propagate: bool = True) -> Any:
        """Async twin of `get`."""
        if self.final is not None:
            return await self.final.aget(timeout, propagate=propagate)
        return [await member.aget(timeout, propagate=propagate) for member in self.members]
