"""`TaskOptions`: the one definition of what `@app.task` accepts.

The decorator checks against it, its error lists its fields, and each field carries the description
the docs are made from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rabbittask.control.rates import RateText
from rabbittask.errors import ConfigError
from rabbittask.explain import describe, unknown_names
from rabbittask.retry import RETRY_OPTIONS
from rabbittask.settings import QueueType
from rabbittask.topology import Overflow

_APP_SETTING = "default: the app setting of the same name"


class TaskOptions(BaseModel):
    """The options of `@app.task`, checked when the task is declared.

    Types are strict (a string is not taken for a number); the retry options apply only when given,
    over the app's settings of the same names (`retry_options()`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    name: str | None = Field(None, description="Task name; default `module.function`.")
    queue: str | None = Field(None, description="Queue the task is sent to; default the app's `default_queue`.")
    queue_type: QueueType | None = Field(None, description=f"`quorum` or `classic` for this queue; {_APP_SETTING}.")
    max_priority: int | None = Field(
        None,
        description="The highest `priority=` a send may give; a quorum queue needs RabbitMQ 4.0+ (which keeps "
        "two levels, 0-4 and 5+, up to 4.2; 32 from 4.3).",
    )
    delivery_limit: int | None = Field(
        None, description=f"Quorum queues: deliveries of a message before the broker dead-letters it; {_APP_SETTING}."
    )
    max_length: int | None = Field(None, description="Most messages the queue holds; see `overflow`.")
    overflow: Overflow | None = Field(None, description="What a full queue does with a new message.")
    single_active_consumer: bool = Field(False, description="One consumer at a time takes from the queue.")
    message_ttl_ms: int | None = Field(None, description="Messages older than this are dead-lettered unrun.")
    accept_celery: bool | None = Field(
        None,
        description="The task's queue is a Celery queue: taken as Celery declared it, Celery messages run, sends "
        f"are Celery messages; {_APP_SETTING}.",
    )
    ignore_result: bool = Field(False, description="Do not store results of this task in the result backend.")
    dedupe_s: float | None = Field(
        None,
        gt=0,
        description="Run a message at most once per id and attempt within this many seconds, across workers: "
        "a copy a publisher re-sent (or one published twice with the same id) is acked unrun.",
    )
    mask_args: tuple[str, ...] = Field(
        (), description="Arguments (by parameter name) the task history shows as '***' (passwords, tokens)."
    )
    unique_for: float | None = Field(
        None, gt=0, description="Send once per key (task and arguments) in this many seconds: see unique tasks."
    )
    unique_key: Callable[..., str] | None = Field(
        None, description="With `unique_for`: the key of a call, from its arguments (default: all of them)."
    )
    rate_limit: RateText = Field(None, description="Runs a second, minute or hour across all workers: '100/s', '5/m'.")
    rate_limit_burst: int | None = Field(None, ge=1, description="Runs that may start at once after an idle period.")
    bind: bool = Field(False, description="Pass a `TaskContext` (id, attempt, headers, `.retry()`) as first argument.")
    time_limit: float | None = Field(
        None, description="Hard limit in seconds: the run is stopped and the message dead-lettered."
    )
    soft_time_limit: float | None = Field(
        None, description="Soft limit in seconds: `SoftTimeLimitExceeded` is raised inside the task."
    )
    max_retries: int | None = Field(None, description=f"Retries after the first run (None: no limit); {_APP_SETTING}.")
    retry_backoff: bool | float = Field(
        True, description=f"Exponential back-off base in seconds (True: 1 s; False: `retry_delay`); {_APP_SETTING}."
    )
    retry_backoff_max: float = Field(600.0, description=f"Longest wait before a retry, in seconds; {_APP_SETTING}.")
    retry_jitter: bool = Field(True, description=f"Wait between half and all of the back-off; {_APP_SETTING}.")
    retry_delay: float = Field(1.0, description=f"Wait before each retry without back-off, seconds; {_APP_SETTING}.")
    autoretry_for: tuple[type[BaseException], ...] = Field(
        (), description="Exceptions that retry the task without `raise Retry` (added to the app's)."
    )
    partition_by: str | None = Field(None, description="Argument whose tasks run one at a time, in publish order.")
    fair_by: str | None = Field(None, description="Argument (a tenant) whose backlog must not hold up the others.")
    partitions: int | None = Field(None, description="Partition queues of a `partition_by` or `fair_by` queue.")
    partition_retry: Literal["wait", "skip"] = Field(
        "wait", description="`partition_by` retries: wait in place, holding up the key (`wait`), or go behind (`skip`)."
    )

    @field_validator("autoretry_for", mode="before")
    @classmethod
    def _exception_classes(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple):
            return value  # refused as not a tuple
        bad = [t for t in value if not (isinstance(t, type) and issubclass(t, BaseException))]
        if bad:
            raise ValueError(f"autoretry_for takes exception classes, not {', '.join(map(repr, bad))}")
        return tuple(value)  # a list reads as well

    @classmethod
    def read(cls, options: Mapping[str, Any], task_name: str) -> TaskOptions:
        """The options given for task `task_name`; `ConfigError` naming the task, the option and what is allowed."""
        unknown = options.keys() - cls.model_fields.keys()
        if unknown:
            raise ConfigError(
                f"task {task_name!r}: {unknown_names(unknown, cls.model_fields, 'option')} for @app.task; "
                f"known options are {', '.join(sorted(cls.model_fields))}"
            )
        try:
            return cls(**options)
        except ValidationError as e:
            raise ConfigError(f"task {task_name!r}: invalid option(s) for @app.task: {describe(e)}") from None

    def retry_options(self) -> dict[str, Any]:
        """The retry options that were given (the others come from the app's settings)."""
        return {name: getattr(self, name) for name in RETRY_OPTIONS & self.model_fields_set}
