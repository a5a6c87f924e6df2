"""Partitioned queues: per-key ordering (`partition_by`) and tenant fairness (`fair_by`) on RabbitMQ alone.

A partitioned queue `orders` with `partitions=8` is, on the broker:

    rabbittask --"orders"--> rabbittask.orders.hash (x-consistent-hash, hash-header rt-partition-key)
                                 |-- weight 1 --> orders.p0 ... orders.p7   (quorum; dead letters to orders.dlq)
    rabbittask.delay --"*.*...orders"--> rabbittask.orders.hash             (the delay ladder's exit)

A publisher sends to the task exchange with routing key `orders` as for any queue and puts the value of
the key argument in the `rt-partition-key` header; the consistent-hash exchange hashes that header, so
one key always lands in the same partition queue (a retry through the delay ladder keeps the header and
comes back to it). With `partition_by` every partition queue has single-active-consumer: the broker gives
each partition to one consumer at a time in the whole cluster and fails over to a standby when it dies;
the worker consumes it with a prefetch of 1 (`PARTITION_PREFETCH`) and acks after the run, so one key's
tasks run one at a time, in publish order. With `fair_by` the partitions have no single consumer: every
child consumes every partition with a prefetch of 1, so the broker interleaves the partitions and one
tenant's backlog waits in its own partition instead of in front of everyone.

Pure functions, like topology.py. The exchange type is a plugin shipped with RabbitMQ but not enabled by
default (`PLUGIN`); declaring it on a broker without it fails with `plugin_missing`'s explanation.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic_core import to_json

from rabbittask.delays import DELAY_LEVELS, delay_exchange_name
from rabbittask.errors import ConfigError, TopologyMismatch
from rabbittask.message import H_PARTITION_KEY
from rabbittask.topology import (
    BindingDecl,
    Declaration,
    ExchangeBindingDecl,
    ExchangeDecl,
    QueueDecl,
    QueueSpec,
    dlq_arguments,
    dlq_name,
    dlx_name,
    queue_arguments,
)

PLUGIN = "rabbitmq_consistent_hash_exchange"
HASH_EXCHANGE_TYPE = "x-consistent-hash"
MAX_PARTITIONS = 1024
# A partition is consumed one message at a time: the next one is delivered only after the ack of the
# last, so nothing of the same partition can run beside it (threads, async tasks, inline runs alike).
PARTITION_PREFETCH = 1
# Every partition gets the same share of the hash space (the plugin's weight is the binding's routing key).
PARTITION_WEIGHT = "1"


def partition_exchange_name(exchange: str, queue: str) -> str:
    """The consistent-hash exchange that spreads the messages of partitioned queue `queue`."""
    return f"{exchange}.{queue}.hash"


def partition_queue_name(queue: str, index: int) -> str:
    """Name of partition `index` (0-based) of partitioned queue `queue`: `orders.p3`."""
    return f"{queue}.p{index}"


def partition_queues(spec: QueueSpec) -> list[str]:
    """The queues a worker consumes for `spec`: its partitions, or the queue itself when it has none."""
    if not spec.partitions:
        return [spec.name]
    return [partition_queue_name(spec.name, i) for i in range(spec.partitions)]


def home_partitions(queues: list[str], slot: tuple[int, int]) -> tuple[list[str], list[str]]:
    """`queues` split into a child's home partitions (consumed at once) and the others (consumed as standby).

    `slot` is (this child's index, the worker's number of children): child i of c takes every c-th one.
    """
    index, count = slot
    home = [q for i, q in enumerate(queues) if i % count == index % count]
    return home, [q for q in queues if q not in home]


def check_partitions(spec: QueueSpec) -> None:
    """Refuse partition settings that would not keep order or fairness, saying what to do."""
    where = f"queue {spec.name!r}"
    if not 1 <= spec.partitions <= MAX_PARTITIONS:
        raise ConfigError(f"{where}: partitions must be 1..{MAX_PARTITIONS}, got {spec.partitions}")
    if spec.queue_type != "quorum":
        raise ConfigError(
            f"{where}: partitioned queues are quorum queues (a requeued message keeps its place, the broker "
            "fails single-active-consumer over); drop queue_type='classic' or set queue_type='quorum'"
        )
    if spec.max_length is not None or spec.message_ttl_ms is not None:
        raise ConfigError(
            f"{where}: max_length and message_ttl_ms are not supported on a partitioned queue (they would apply "
            "to each partition and drop messages out of order); drop them"
        )
    if spec.max_priority is not None:
        raise ConfigError(
            f"{where}: max_priority is not supported on a partitioned queue (priorities would reorder a key's "
            "messages); drop it, or send urgent tasks to a queue of their own"
        )


def partition_declarations(exchange: str, specs: Iterable[QueueSpec]) -> list[Declaration]:
    """What the broker must have for partitioned queues `specs` (the task exchanges are declared elsewhere)."""
    decls: list[Declaration] = []
    due_key = "*." * DELAY_LEVELS
    for spec in sorted(specs, key=lambda s: s.name):
        hashed = partition_exchange_name(exchange, spec.name)
        # Hash the key header, not the routing key: publishers and the delay ladder route by queue name.
        decls.append(ExchangeDecl(hashed, HASH_EXCHANGE_TYPE, {"hash-header": H_PARTITION_KEY}))
        decls.append(ExchangeBindingDecl(hashed, exchange, spec.name))
        decls.append(ExchangeBindingDecl(hashed, delay_exchange_name(exchange), due_key + spec.name))
        # Each partition dead-letters with the queue's name as routing key: one orders.dlq for all of them.
        arguments = queue_arguments(spec, exchange)
        for name in partition_queues(spec):
            decls += [QueueDecl(name, arguments), BindingDecl(name, hashed, PARTITION_WEIGHT)]
        decls += [
            QueueDecl(dlq_name(spec.name), dlq_arguments(spec)),
            BindingDecl(dlq_name(spec.name), dlx_name(exchange), spec.name),
        ]
    return decls


def plugin_missing(reply_text: str) -> TopologyMismatch | None:
    """The error for a broker that refused the consistent-hash exchange type; None for other refusals."""
    if HASH_EXCHANGE_TYPE not in reply_text:
        return None
    return TopologyMismatch(
        f"the broker does not know exchange type {HASH_EXCHANGE_TYPE!r}, which partitioned queues "
        f"(partition_by / fair_by) need: enable the plugin that ships with RabbitMQ with "
        f"`rabbitmq-plugins enable {PLUGIN}` (on every node of a cluster; no restart needed), then start again"
    )


KeyReader = Callable[[tuple[Any, ...], Mapping[str, Any]], str]


def key_reader(fn: Callable[..., Any], task_name: str, argument: str, option: str, *, bind: bool) -> KeyReader:
    """A function that reads the partition key (`argument`'s value) from a validated call of `fn`.

    `ConfigError` when `fn` has no such parameter. The key is the value's text for a string, else its
    JSON (`42` and `"42"` are one key), so a producer in another language can compute the same header.
    """
    params = list(inspect.signature(fn).parameters.values())[1 if bind else 0 :]
    names = [p.name for p in params]
    if argument not in names:
        raise ConfigError(
            f"task {task_name!r}: {option}={argument!r} names no parameter of the task; its parameters are "
            f"{', '.join(names) or '(none)'}"
        )
    param = params[names.index(argument)]
    index = names.index(argument) if param.kind is not inspect.Parameter.KEYWORD_ONLY else None
    default = param.default

    def read(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
        if argument in kwargs:
            value = kwargs[argument]
        elif index is not None and index < len(args):
            value = args[index]
        elif default is not inspect.Parameter.empty:
            value = default
        else:  # validation refuses such a call first
            raise ConfigError(f"task {task_name!r}: the call has no value for its partition key {argument!r}")
        return partition_key_text(value)

    return read


def partition_key_text(value: Any) -> str:
    """The `rt-partition-key` header of a key value: a string as it is, anything else as JSON."""
    return value if isinstance(value, str) else to_json(value).decode()


def task_key_reader(
    fn: Callable[..., Any],
    task_name: str,
    partition_by: str | None,
    fair_by: str | None,
    spec: QueueSpec,
    known: QueueSpec | None,
    single_active_consumer: bool,
    bind: bool,
) -> KeyReader | None:
    """The key reader of a task declared with `partition_by` or `fair_by` on `spec` (None without), where
    `known` is its queue as declared by an earlier task; `ConfigError` for a combination that cannot work."""
    where = f"task {task_name!r}"
    if partition_by is not None and fair_by is not None:
        raise ConfigError(
            f"{where}: give partition_by (one key at a time, in order) or fair_by (tenants take turns), not both"
        )
    option, argument = ("partition_by", partition_by) if partition_by is not None else ("fair_by", fair_by)
    if argument is None:
        if spec.partitions:
            raise ConfigError(
                f"{where}: partitions={spec.partitions} needs partition_by='<argument>' (per-key order) or "
                "fair_by='<argument>' (tenant fairness)"
            )
        if known is not None and known.partitions:
            raise ConfigError(
                f"{where}: queue {spec.name!r} is partitioned by another task; a task on it needs partition_by or "
                f"fair_by and partitions={known.partitions} too (or another queue)"
            )
        return None
    if not spec.partitions:
        raise ConfigError(f"{where}: {option}={argument!r} needs partitions=N, the number of partition queues")
    if fair_by is not None and single_active_consumer:
        raise ConfigError(
            f"{where}: fair_by spreads a tenant's tasks over every worker; single_active_consumer would run them on "
            "one; use partition_by for one-at-a-time order"
        )
    check_partitions(spec)
    return key_reader(fn, task_name, argument, option, bind=bind)
