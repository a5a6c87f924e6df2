"""Task time limits against the broker's `consumer_timeout`, checked when a worker starts.

RabbitMQ closes a channel (406 PRECONDITION_FAILED) when one of its deliveries stays unacked
longer than `consumer_timeout` (30 min by default) and requeues all it held, so a task allowed to
run longer is cut off by the broker, and redelivered, before its own limit can fire. The value is
node configuration (`rabbitmq.conf`, or `advanced.config`) that no AMQP client can read, so the
worker takes it as `--consumer-timeout` (default: RabbitMQ's 1800 s) and checks every task with a
time limit against it. The clock starts at delivery, not when the task starts: a sync task can
wait behind `prefetch / threads` others in its child first, and that wait is counted too. A retry
of a `partition_by` task waits in the worker with its message unacked, so its back-off counts as well.

From RabbitMQ 3.11.15 a consumer can ask for a timeout of its own (`x-consumer-timeout`, taking
precedence over the node's): there the worker gives the consumers of a queue whose tasks may hold
a message longer than `--consumer-timeout` a timeout of their own instead (`consumer_timeouts`),
and the start-up check has nothing to report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rabbittask.amqp import blocking
from rabbittask.amqp.server import Server
from rabbittask.errors import RabbitTaskError
from rabbittask.worker.options import WorkerOptions

if TYPE_CHECKING:
    from rabbittask.app import App
    from rabbittask.task import Task


HOLD_MARGIN = 1.25  # a consumer's own timeout: the longest a message may be held, and a quarter more
MAX_TIMEOUT_MS = 2**31 - 1  # the largest value RabbitMQ takes


def consumer_timeouts(app: App, queues: Sequence[str], options: WorkerOptions) -> dict[str, float]:
    """Queue -> the consumer timeout (s) its consumers ask for, where its tasks may outlast the broker's."""
    prefetch = options.prefetch or app.settings.prefetch
    wanted: dict[str, float] = {}
    for task in app.tasks.values():
        hold_s = _longest_hold_s(task, prefetch, options.threads)
        if task.queue in queues and hold_s >= options.consumer_timeout_s:
            timeout_s = min(math.ceil(hold_s * HOLD_MARGIN), MAX_TIMEOUT_MS // 1000)
            wanted[task.queue] = max(wanted.get(task.queue, 0.0), float(timeout_s))
    return wanted


def broker_server(app: App) -> Server | None:
    """The version of the broker the worker will consume from, or None if it does not answer now."""
    try:
        connection = blocking.connect(app.settings, "worker start-up check")
    except RabbitTaskError:
        return None  # the children say why when they cannot connect
    try:
        return Server.of(connection._impl.server_properties)
    finally:
        blocking.close_quietly(connection)


def _longest_hold_s(task: Task[..., Any], prefetch: int, threads: int) -> float:
    """The longest a message of `task` can stay unacked in a worker, from delivery to ack (0: unbounded)."""
    limit_s = task.time_limit or task.soft_time_limit or 0.0
    hold_s = (1 if task.is_async else _rounds(prefetch, threads)) * limit_s
    if task.retries_in_place:
        hold_s = max(hold_s, _in_place_wait_s(task) + (task.time_limit or 0))
    return hold_s


def _rounds(prefetch: int, threads: int) -> int:
    """Sync runs a prefetched message may wait through in its child, its own included."""
    return 1 if prefetch <= threads else math.ceil(prefetch / threads)


def _in_place_wait_s(task: Task[..., Any]) -> float:
    """The longest back-off a `partition_by` retry waits in the worker, its message unacked (inplace.py)."""
    policy = task.retry_policy
    return float(policy.retry_delay if policy.retry_backoff is False else policy.retry_backoff_max)


def consumer_timeout_problems(app: App, queues: Sequence[str], options: WorkerOptions) -> list[str]:
    """One sentence per task whose time limit can outlast the broker's consumer_timeout, saying what to change."""
    timeout_s = options.consumer_timeout_s
    prefetch = options.prefetch or app.settings.prefetch
    rounds = _rounds(prefetch, options.threads)
    fix_broker = (
        f"raise consumer_timeout in rabbitmq.conf (milliseconds, e.g. consumer_timeout = {int(timeout_s * 2000)}) "
        "and pass the new value as --consumer-timeout (or use RabbitMQ 3.11.15 or later, where the worker's "
        "consumers ask for a timeout of their own)"
    )
    problems = []
    for task in sorted(app.tasks.values(), key=lambda t: t.name):
        wait_s = _in_place_wait_s(task)
        if task.queue in queues and task.retries_in_place and wait_s + (task.time_limit or 0) >= timeout_s:
            # A partition_by retry waits in the worker, its message unacked (inplace.py): that wait counts too.
            problems.append(
                f"task {task.name!r}: its retries wait in place (partition_by) up to {wait_s:g} s with the message "
                f"unacked, not shorter than the broker's consumer_timeout ({timeout_s:g} s) with its run: lower "
                f"retry_backoff_max, use partition_retry='skip', or {fix_broker}."
            )
        limit_s = task.time_limit or task.soft_time_limit
        if task.queue not in queues or limit_s is None:
            continue
        kind = "time_limit" if task.time_limit else "soft_time_limit"
        if limit_s >= timeout_s:
            problems.append(
                f"task {task.name!r}: {kind} {limit_s:g} s is not shorter than the broker's consumer_timeout "
                f"({timeout_s:g} s): the broker closes the channel and redelivers the message before the limit "
                f"fires. Lower {kind}, or {fix_broker}."
            )
        elif not task.is_async and rounds * limit_s >= timeout_s:
            fits = max(1, math.ceil(timeout_s / limit_s) - 1) * options.threads
            problems.append(
                f"task {task.name!r}: with --prefetch {prefetch} and --threads {options.threads} a message can wait "
                f"behind {rounds - 1} others of up to {limit_s:g} s each, {rounds * limit_s:g} s from delivery to "
                f"ack, longer than the broker's consumer_timeout ({timeout_s:g} s). Use --prefetch {fits} or more "
                f"--threads, or {fix_broker}."
            )
    return problems
