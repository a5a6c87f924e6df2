"""Task time limits against the broker's `consumer_timeout`, checked when a worker starts.

RabbitMQ closes a channel (406 PRECONDITION_FAILED) when one of its deliveries stays unacked
longer than `consumer_timeout` (30 min by default) and requeues all it held, so a task allowed to
run longer is cut off by the broker, and redelivered, before its own limit can fire. The value is
node configuration (`rabbitmq.conf`, or `advanced.config`) that no AMQP client can read, so the
worker takes it as `--consumer-timeout` (default: RabbitMQ's 1800 s) and checks every task with a
time limit against it. The clock starts at delivery, not when the task starts: a sync task can
wait behind `prefetch / threads` others in its child first, and that wait is counted too. A retry
of a `partition_by` task waits in the worker with its message unacked, so its back-off counts as well.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rabbittask.worker.options import WorkerOptions

if TYPE_CHECKING:
    from rabbittask.app import App


def consumer_timeout_problems(app: App, queues: Sequence[str], options: WorkerOptions) -> list[str]:
    """One sentence per task whose time limit can outlast the broker's consumer_timeout, saying what to change."""
    timeout_s = options.consumer_timeout_s
    prefetch = options.prefetch or app.settings.prefetch
    rounds = 1 if prefetch <= options.threads else math.ceil(prefetch / options.threads)
    fix_broker = (
        f"raise consumer_timeout in rabbitmq.conf (milliseconds, e.g. consumer_timeout = {int(timeout_s * 2000)}) "
        "and pass the new value as --consumer-timeout"
    )
    problems = []
    for task in sorted(app.tasks.values(), key=lambda t: t.name):
        policy = task.retry_policy
        wait_s = policy.retry_delay if policy.retry_backoff is False else policy.retry_backoff_max
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
