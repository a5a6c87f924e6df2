"""Apply the code's topology only when nothing on the broker conflicts with it.

The plan is made over AMQP, changing nothing: a passive declare says whether an object exists;
an existing one is re-declared with the code's arguments, which the broker either accepts as
equivalent (a no-op) or refuses with 406 naming one argument that differs. That argument is then
set to the broker's value and the declare tried again, so every difference is found, not only
the first. Objects are created only if no existing object conflicts.

This covers everything `App.declarations()` returns, the delay ladder included: its queues are
probed with their fixed x-message-ttl and dead-letter arguments like any queue. Bindings (to
queues, and the ladder's exchange-to-exchange ones) cannot be read over AMQP; binding is
idempotent, so apply always declares them (`topology diff --management-url` compares them).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions

from rabbittask.amqp.server import Server, for_server
from rabbittask.errors import BrokerError
from rabbittask.ops.admin.compare import describe, show
from rabbittask.ops.admin.live import exists
from rabbittask.publish.declare import PRECONDITION_FAILED, declare_sync
from rabbittask.topology import Declaration, ExchangeDecl, QueueDecl

_REFUSAL = re.compile(r"inequivalent arg '(?P<arg>[^']+)' for ")
# The reply text is an AMQP shortstr: with long names the broker cuts it short and the values are lost.
_VALUES = re.compile(r"received (?P<received>.*) but current is (?P<current>.*)$")
_TYPED = re.compile(r"^the value '(?P<value>.*)' of type '(?P<type>\w+)'$")
_INTS = frozenset({"signedint", "long", "short", "byte", "unsignedbyte", "unsignedshort", "unsignedint"})
# Properties that are not x-arguments: a difference in them cannot be probed past.
_PROPERTIES = frozenset({"type", "durable", "auto_delete", "exclusive"})
_MAX_PROBES = 32


@dataclass
class Conflict:
    """An existing object whose arguments or type differ from the code's."""

    obj: str
    differences: list[str] = field(default_factory=list)
    complete: bool = True


@dataclass
class Plan:
    """What `apply` found: objects as declared, objects to create, and conflicts."""

    same: list[str] = field(default_factory=list)
    create: list[Declaration] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)


def plan(connection: pika.BlockingConnection, decls: Sequence[Declaration]) -> Plan:
    """Probe every exchange and queue of `decls` (as the broker's version needs them) without changing anything."""
    result = Plan()
    for d in for_server(decls, Server.of(connection._impl.server_properties)):
        if not isinstance(d, ExchangeDecl | QueueDecl):
            result.create.append(d)  # bindings (to queues or exchanges): idempotent, and not readable over AMQP
            continue
        kind = "exchange" if isinstance(d, ExchangeDecl) else "queue"
        obj = describe(d)
        if not exists(connection, kind, d.name):
            result.create.append(d)
            continue
        conflict = _probe(connection, d, obj)
        if conflict.differences:
            result.conflicts.append(conflict)
        else:
            result.same.append(obj)
    return result


def apply(connection: pika.BlockingConnection, decls: Sequence[Declaration]) -> None:
    """Declare everything (after a plan without conflicts); raises `TopologyMismatch` if something changed since."""
    declare_sync(connection.channel(), decls)


def _probe(connection: pika.BlockingConnection, d: ExchangeDecl | QueueDecl, obj: str) -> Conflict:
    differences: dict[str, str] = {}  # by argument: a later, clearer refusal replaces a vaguer line
    args = dict(d.arguments)
    complete = True
    for _ in range(_MAX_PROBES):
        refusal = _refusal(connection, d, obj, args)
        if refusal is None:
            break
        m = _REFUSAL.search(refusal)
        if m is None:
            differences[refusal] = refusal
            complete = False
            break
        arg, ours = m.group("arg"), d.arguments.get(m.group("arg"))
        v = _VALUES.search(refusal)
        found, current = _value(v.group("current"), ours) if v else (False, None)
        if arg == "x-queue-type":
            # A type never changes in place: the other arguments do not matter until it matches.
            broker = (current or "classic") if found else "another type"
            differences[arg] = f"type is {broker} on the broker, the code declares {ours}"
            break
        if arg in _PROPERTIES:
            broker, code = (v.group("current"), v.group("received")) if v else ("different", "something else")
            differences[arg] = (
                f"{arg} is {broker.strip(chr(39))} on the broker, the code declares {code.strip(chr(39))}"
            )
            complete = False
            break
        if not found:
            if arg in differences:  # guessed "none" already, and the broker still refuses: give up on it
                complete = False
                break
            # The value was cut from the reply: guess that the broker has none, and learn more if wrong.
            differences[arg] = f"{arg} differs on the broker (value cut from its reply), the code declares {show(ours)}"
            args.pop(arg, None)
            continue
        differences[arg] = f"{arg} is {show(current)} on the broker, the code declares {show(ours)}"
        if current is None:
            args.pop(arg, None)
        else:
            args[arg] = current  # take the broker's value and look for the next difference
    else:
        complete = False
    if "x-queue-type" in differences:
        # The real difference: a queue of another type differs in the arguments that come with the type
        # (dead-lettering, overflow), and none of it can change in place. The rest is compared once it matches.
        return Conflict(obj, [differences["x-queue-type"]], complete=True)
    return Conflict(obj, sorted(differences.values()), complete)


def _refusal(
    connection: pika.BlockingConnection, d: ExchangeDecl | QueueDecl, obj: str, args: dict[str, Any]
) -> str | None:
    """Re-declare `d` with `args`: None if the broker accepts it as equivalent, else its 406 reply text."""
    channel = connection.channel()
    try:
        if isinstance(d, ExchangeDecl):
            channel.exchange_declare(d.name, d.type, durable=True, arguments=args or None)
        else:
            channel.queue_declare(d.name, durable=True, arguments=args)
    except pika.exceptions.ChannelClosedByBroker as e:
        if e.reply_code != PRECONDITION_FAILED:
            raise BrokerError(f"the broker refused to re-declare {obj}: {e.reply_text}") from None
        return str(e.reply_text)
    channel.close()
    return None


def _value(text: str, ours: Any) -> tuple[bool, Any]:
    """Decode one side of a 406 text (`none`, `'5'`, `the value '5' of type 'signedint'`): (understood, value)."""
    if text == "none":
        return True, None
    typed = _TYPED.match(text)
    raw, kind = (typed.group("value"), typed.group("type")) if typed else (text.strip("'"), _kind(ours))
    try:
        if kind == "bool":
            return True, raw == "true"
        if kind in _INTS:
            return True, int(raw)
        if kind in ("double", "float"):
            return True, float(raw)
        if kind in ("longstr", "shortstr"):
            return True, raw
    except ValueError:
        pass
    return False, raw


def _kind(value: Any) -> str:
    """The AMQP type name pika sends for `value` (what the broker compared our value against)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "long"
    if isinstance(value, float):
        return "double"
    return "longstr"
