"""`app.schedule(...)`: check every argument at declaration and build the ScheduleEntry."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from rabbittask.beat.entry import CatchUp, ScheduleEntry, every_seconds, seconds_of
from rabbittask.errors import ConfigError
from rabbittask.task import Signature, Task

if TYPE_CHECKING:
    from rabbittask.app import App


def build_entry(
    app: App,
    name: str,
    target: Signature[Any] | Task[Any, Any],
    *,
    cron: str | None = None,
    every: timedelta | float | None = None,
    tz: str = "UTC",
    args: tuple[Any, ...] | list[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    queue: str | None = None,
    expires: timedelta | float | None = None,
    catch_up: CatchUp = "skip",
    catch_up_limit: int = 100,
    grace_s: float = 30.0,
) -> ScheduleEntry:
    """A checked entry: bad cron, unknown time zones, bad arguments all fail here, not at the first tick."""
    if isinstance(target, Signature):
        if args is not None or kwargs is not None:
            raise ConfigError(f"schedule {name!r}: give arguments in task.s(...) or as args=/kwargs=, not both")
        task, call_args, call_kwargs = target.task, tuple(target.args), dict(target.kwargs)
    elif isinstance(target, Task):
        task, call_args, call_kwargs = target, tuple(args or ()), dict(kwargs or {})
    else:
        raise ConfigError(f"schedule {name!r}: expected task.s(...) or a task, got {type(target).__name__}")
    if task.app is not app:
        raise ConfigError(f"schedule {name!r}: task {task.name!r} belongs to another app ({task.app.name!r})")
    entry = ScheduleEntry(
        name=name,
        task_name=task.name,
        args=call_args,
        kwargs=call_kwargs,
        queue=queue or task.queue,
        cron=cron,
        every_s=every_seconds(name, every) if every is not None else None,
        tz=tz,
        expires_s=seconds_of(name, "expires", expires),
        catch_up=catch_up,
        catch_up_limit=catch_up_limit,
        grace_s=grace_s,
    )
    task.message(entry.args, entry.kwargs, queue=entry.queue)  # validates and JSON-encodes the arguments now
    return entry
