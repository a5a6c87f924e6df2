"""The soak's report (bench/soak.py): what is left on the broker, the stalls, the tables."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rabbittask.testing import RabbitNode

if TYPE_CHECKING:
    from bench.soak import Soak


def longest_stalls(soak: Soak, window_s: float = 30.0) -> list[tuple[str, float]]:
    """For each fault, the longest gap between two run ends from its start to `window_s` after its end
    (cut where publishing stopped: after that, a quiet queue is no stall)."""
    ends = sorted(run.end for run in soak.ledger.runs() if run.end is not None)
    out = []
    for start, end, what in soak.faults:
        until = min(end + window_s, max(soak.publishing_until, end))
        inside = [start] + [t for t in ends if start <= t <= until] + [until]
        out.append((what, max(b - a for a, b in zip(inside, inside[1:], strict=False))))
    return out


def ladder_depth(node: RabbitNode) -> int:
    """Messages waiting in the delay ladder of the default exchange (where the long countdowns are)."""
    listed = node.ctl("list_queues", "name", "messages", "--no-table-headers", "-q")
    return sum(int(n) for name, n in (line.split() for line in listed.splitlines() if line.strip())
               if name.startswith("rabbittask.delay."))  # fmt: skip


def dead_letters(node: RabbitNode, queue: str) -> dict[str, int]:
    """Reasons of the dead letters in `queue` (left in place: counted from `rt-reason` or the broker's)."""
    import pika

    reasons: dict[str, int] = {}
    connection = pika.BlockingConnection(pika.URLParameters(node.url))
    try:
        channel = connection.channel()
        while True:
            method, props, _ = channel.basic_get(queue, auto_ack=False)
            if method is None:
                break
            headers = props.headers or {}
            reason = str(headers.get("rt-reason") or headers.get("x-first-death-reason") or "?")
            reasons[reason] = reasons.get(reason, 0) + 1
    finally:
        connection.close()  # unacked ones go back
    return reasons


def print_tables(soak: Soak, rows: list[tuple[str, str]]) -> None:
    """The report: the ledger's figures, RSS over the run, and the longest stall after each fault."""
    for kind, values in soak.rss.items():
        if values:
            rows.append((f"{kind} RSS", f"{min(values) / 2**20:.0f}-{max(values) / 2**20:.0f} MB "
                                        f"(first {values[0] / 2**20:.0f}, last {values[-1] / 2**20:.0f})"))  # fmt: skip
    print("\n| what | figure |\n|---|---|")
    for what, figure in rows:
        print(f"| {what} | {figure} |")
    print("\n| fault | longest stall after it |\n|---|---|")
    for what, stall in longest_stalls(soak):
        print(f"| {what} | {stall:.1f} s |")
