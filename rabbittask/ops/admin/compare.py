"""How a broker's topology differs from the code's: a pure comparison, and the safe ways out.

The live side is a `Live` snapshot of one vhost. Read through the management API it has every
type, argument and binding; read by passive declares it only knows which objects exist, and
the comparison says what it could therefore not compare.

"Extra" objects are those that look like the app's but that the code no longer declares:
exchanges named `<app exchange>.*`, bindings (to queues or exchanges) from the app's exchanges
or from those extra exchanges, and queues bound by them. The delay ladder (`<exchange>.delay*`) is part of the code's
declarations, so its exchanges, queues and exchange-to-exchange bindings are the app's own and
compared like any other. Other objects in the vhost belong to someone else and are left out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from rabbittask.delays import delay_names
from rabbittask.topology import (
    ARGUMENT_OPTIONS,
    BindingDecl,
    Declaration,
    ExchangeBindingDecl,
    ExchangeDecl,
    QueueDecl,
    binding_key,
)

Kind = Literal["missing", "extra", "changed"]
SIGN: dict[Kind, str] = {"missing": "-", "extra": "+", "changed": "~"}


@dataclass(frozen=True, slots=True)
class Difference:
    """One way the broker differs from the code."""

    kind: Kind
    obj: str  # e.g. "queue 'emails'"
    detail: str = ""

    def __str__(self) -> str:
        what = {"missing": "missing on the broker", "extra": "on the broker, not in the code", "changed": ""}[self.kind]
        return f"{SIGN[self.kind]} {self.obj}: {self.detail or what}"


@dataclass
class Live:
    """What one vhost of a broker has; `None` values and `complete=False` mean "not read"."""

    exchanges: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    queues: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    bindings: list[dict[str, Any]] | None = None
    complete: bool = True
    policies: list[dict[str, Any]] = field(default_factory=list)


NOT_COMPARED = (
    "not compared without --management-url: queue types and arguments, exchange types, bindings, "
    "and extra objects (run `rabbittask topology apply --dry-run` to check arguments over AMQP)"
)


def same(a: Any, b: Any) -> bool:
    """Equal as the broker sees it: 5, 5.0, "5" and True are four different values."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def show(value: Any) -> str:
    return "not set" if value is None else json.dumps(value)


def describe(d: Declaration) -> str:
    """How output names a declared object: `queue 'emails'`, `binding 'ex' -> exchange 'ex.x' (key 'k')`."""
    if isinstance(d, ExchangeDecl):
        return f"exchange {d.name!r}"
    if isinstance(d, QueueDecl):
        return f"queue {d.name!r}"
    return _binding_text(*binding_key(d))


def _binding_text(source: str, destination: str, destination_type: str, routing_key: str) -> str:
    return f"binding {source!r} -> {destination_type} {destination!r} (key {routing_key!r})"


def argument_differences(code: dict[str, Any], broker: dict[str, Any], skip: Iterable[str] = ()) -> list[str]:
    """`<arg> is <broker> on the broker, the code declares <code>` for each differing argument."""
    out = []
    for arg in sorted((set(code) | set(broker)) - set(skip)):
        if not same(code.get(arg), broker.get(arg)):
            out.append(f"{arg} is {show(broker.get(arg))} on the broker, the code declares {show(code.get(arg))}")
    return out


def compare(decls: Sequence[Declaration], live: Live) -> tuple[list[Difference], list[str]]:
    """The differences between the code's declarations and `live`, and notes (policies, what was not compared)."""
    diffs: list[Difference] = []
    notes: list[str] = []
    for d in decls:
        if isinstance(d, ExchangeDecl):
            diffs += _exchange(d, live)
        elif isinstance(d, QueueDecl):
            diffs += _queue(d, live, notes)
    if not live.complete or live.bindings is None:
        notes.append(NOT_COMPARED)
        return diffs, notes
    diffs += _bindings(decls, live)
    return diffs, notes


def _exchange(d: ExchangeDecl, live: Live) -> list[Difference]:
    obj = f"exchange {d.name!r}"
    if d.name not in live.exchanges:
        return [Difference("missing", obj)]
    x = live.exchanges[d.name]
    if x is None:
        return []
    out = []
    if x.get("type") != d.type:
        out.append(Difference("changed", obj, f"type is {x.get('type')} on the broker, the code declares {d.type}"))
    for prop, want in (("durable", True), ("auto_delete", False), ("internal", False)):
        if x.get(prop, want) != want:
            out.append(
                Difference(
                    "changed", obj, f"{prop} is {show(x.get(prop))} on the broker, the code declares {show(want)}"
                )
            )
    out += [Difference("changed", obj, t) for t in argument_differences(d.arguments, x.get("arguments") or {})]
    return out


def _queue(d: QueueDecl, live: Live, notes: list[str]) -> list[Difference]:
    obj = f"queue {d.name!r}"
    if d.name not in live.queues:
        return [Difference("missing", obj)]
    q = live.queues[d.name]
    if q is None:
        return []
    out = []
    want_type = d.arguments.get("x-queue-type", "classic")
    if q.get("type", "classic") != want_type:
        out.append(Difference("changed", obj, f"type is {q.get('type')} on the broker, the code declares {want_type}"))
    for prop, want in (("durable", True), ("auto_delete", False), ("exclusive", False)):
        if q.get(prop, want) != want:
            out.append(
                Difference(
                    "changed", obj, f"{prop} is {show(q.get(prop))} on the broker, the code declares {show(want)}"
                )
            )
    # The type is compared above: a classic queue declared without x-queue-type is equivalent to one with it.
    diffs = argument_differences(d.arguments, q.get("arguments") or {}, skip=("x-queue-type",))
    out += [Difference("changed", obj, t) for t in diffs]
    notes += [f"{p} applies to {obj}" for p in applicable_policies(d.name, "queues", live.policies)]
    return out


def applicable_policies(name: str, kind: str, policies: Sequence[dict[str, Any]]) -> list[str]:
    """The policy and operator policy that apply to object `name`: each the matching one of highest priority."""
    out = []
    for operator in (False, True):
        matching = [
            p
            for p in policies
            if bool(p.get("operator")) == operator
            and p.get("apply-to", "all") in ("all", kind)
            and _matches(p.get("pattern", ""), name)
        ]
        if matching:
            p = max(matching, key=lambda p: (p.get("priority", 0), p["name"]))
            definition = json.dumps(p.get("definition", {}), sort_keys=True)
            out.append(f"{'operator policy' if operator else 'policy'} {p['name']!r} ({definition})")
    return out


def _matches(pattern: str, name: str) -> bool:
    try:
        return re.search(pattern, name) is not None
    except re.error:
        return False  # an Erlang-only regex feature: leave the note out rather than guess


def _bindings(decls: Sequence[Declaration], live: Live) -> list[Difference]:
    assert live.bindings is not None
    own = {d.name for d in decls if isinstance(d, ExchangeDecl)}
    extra_exchanges = sorted(x for x in live.exchanges if x not in own and any(x.startswith(f"{o}.") for o in own))
    wanted = {binding_key(d) for d in decls if isinstance(d, BindingDecl | ExchangeBindingDecl)}
    # Bindings to queues and to exchanges (the delay ladder passes a message from one level's exchange
    # to the next one's), from the app's exchanges and from extra ones (e.g. a level the code dropped).
    sources = own | set(extra_exchanges)
    found = {
        (b["source"], b["destination"], b.get("destination_type", "queue"), b.get("routing_key", ""))
        for b in live.bindings
        if b.get("source") in sources
    }
    out = [Difference("missing", _binding_text(*b)) for b in sorted(wanted - found)]
    out += [Difference("extra", _binding_text(*b)) for b in sorted(found - wanted)]
    queues = {d.name for d in decls if isinstance(d, QueueDecl)}
    bound = {q for _, q, kind, _ in found if kind == "queue"}
    out += [Difference("extra", f"queue {q!r}") for q in sorted(bound - queues) if q in live.queues]
    out += [Difference("extra", f"exchange {x!r}") for x in extra_exchanges]
    return out


def ways_out(obj: str, differences: Sequence[str], exchange: str = "") -> list[str]:
    """The safe ways to resolve a conflict on `obj` ("queue 'emails'"), most conservative first.

    `exchange`: the app's exchange, whose delay ladder objects get their own advice (their
    arguments are not task options).
    """
    kind, _, quoted = obj.partition(" ")
    args = {t.split(" ", 1)[0] for t in differences}
    if exchange and quoted.strip("'") in delay_names(exchange):
        return _ladder_ways_out(kind, quoted, args)
    options = sorted({ARGUMENT_OPTIONS.get(a, "queue_type" if a == "type" else "") for a in args} - {""})
    if kind == "exchange":
        return [
            "make the code match the broker (the app's `exchange` setting names the exchange it uses)",
            f"or use a new exchange name in the code, apply, and delete the old exchange {quoted} once nothing "
            "publishes to it",
            f"or recreate it: `rabbitmqctl delete_exchange {quoted}` then apply again (publishes fail until then, "
            "and its bindings go with it)",
        ]
    name = quoted.strip("'")
    task_queue = name.removesuffix(".dlq") if name.endswith(".dlq") else None
    if task_queue is not None:  # a dead-letter queue takes its type from its task queue's
        obj = f"queue {task_queue!r} (its dead-letter queue has the same type)"
    values = _broker_values(differences)
    settings = [f"{o}={values[o]}" if o in values else o for o in options]
    match = f"set {', '.join(settings)} on the tasks of {obj}" if options else "change the queue's options"
    unknown = "" if len(values) == len(options) else " (the broker's values)"
    ways = [f"make the code match the broker: {match}{unknown}"]
    if "durable" in args:
        ways = ["rabbittask declares every queue durable, so the code cannot match the broker"]
    elif not options:
        ways = [
            "rabbittask sets these arguments itself (they are not options), so the code cannot match the broker: "
            "the queue was declared by hand or by another rabbittask version"
        ]
    recreate = (
        f"or recreate it in place (only once it is empty): stop producers and workers, check "
        f"`rabbitmqctl list_queues name messages`, `rabbitmqctl delete_queue {quoted}`, apply again. "
        "A queue's type and arguments never change in place"
    )
    if task_queue is not None:
        return [
            *ways,
            f"or empty it first (`rabbittask dlq replay -Q {task_queue}` or `dlq purge`), then "
            f"`rabbitmqctl delete_queue {quoted}` and apply again: the next dead letter is kept in the new one",
        ]
    return [
        *ways,
        f"or migrate: give the tasks a new queue name, apply and deploy, let workers drain {quoted}, then delete it",
        recreate,
    ]


_DIFFERENCE = re.compile(r"^(?P<arg>\S+) is (?P<value>.+) on the broker, the code declares ")


def _broker_values(differences: Sequence[str]) -> dict[str, str]:
    """The broker's value of each option a difference line names, as Python: {"queue_type": "'classic'"}."""
    values = {}
    for text in differences:
        m = _DIFFERENCE.match(text)
        if m is None or m["value"] == "not set":
            continue
        option = "queue_type" if m["arg"] == "type" else ARGUMENT_OPTIONS.get(m["arg"], "")
        if option:
            value = m["value"].strip('"')
            values[option] = value if value.lstrip("-").isdigit() else repr(value)
    return values


def _ladder_ways_out(kind: str, quoted: str, args: set[str]) -> list[str]:
    """Ways out for an object of the delay ladder: only its queues' type is a setting."""
    if kind == "exchange":
        return [
            f"the delay ladder's exchanges are always durable topic exchanges: recreate it with "
            f"`rabbitmqctl delete_exchange {quoted}` and apply again at once (its bindings go with it and apply "
            "restores them; delays entering at this level fail to publish in between)",
        ]
    ways = []
    if args & {"type", "x-queue-type"}:
        ways.append(
            "make the code match the broker: set delay_queue_type (RABBITTASK_DELAY_QUEUE_TYPE) to the broker's type"
        )
    if args - {"type", "x-queue-type"}:
        ways.append(
            "its TTL and dead-letter arguments are fixed by the ladder's layout, not options: it was declared "
            "by hand or by another rabbittask version"
        )
    ways.append(
        f"or recreate it once it is empty (it holds delayed tasks and retries until they are due): stop producers "
        f"and workers, wait until `rabbitmqctl list_queues name messages` shows 0 for {quoted} and every longer "
        f"level, `rabbitmqctl delete_queue {quoted}`, apply again"
    )
    return ways
