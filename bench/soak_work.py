"""The soak's workloads beyond plain tasks (bench/soak.py): retries, revokes, a rate limit, chains, chords.

Each is a class with `name`, `run(soak, seconds)` and `figures(soak)`; `figures` returns report rows
(what -> figure) and appends to `soak.problems` whatever breaks a promise. Task code: tests/apps/ledger_app.py.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from rabbittask import App, RabbitTaskError, chain, chord

if TYPE_CHECKING:
    from bench.soak import Soak

RATE_PER_S = 20  # ledger.limited's rate_limit ("20/s", burst 1)
CHORD_SIZE = 20
CHAIN_STEPS = 3


def register(app: App, prefix: str) -> None:
    """The soak's tasks as the publishing process sees them (names and queues of tests/apps/ledger_app.py)."""

    @app.task(queue=f"{prefix}.work", name="ledger.retry")
    def retry(key: str, fail_times: int, delay_s: float) -> str: ...

    @app.task(queue=f"{prefix}.limited", name="ledger.limited")
    def limited(key: str) -> str: ...

    @app.task(queue=f"{prefix}.work", name="ledger.member")
    def member(i: int) -> int: ...

    @app.task(queue=f"{prefix}.work", name="ledger.collect")
    def collect(results: list[int], tag: str) -> int: ...

    @app.task(queue=f"{prefix}.work", name="ledger.append")
    def append(results: list[int], i: int, tag: str = "") -> list[int]: ...


def records(soak: Soak, event: str) -> list[dict[str, Any]]:
    return [r for r in soak.ledger.records() if r["event"] == event]


class Retries:
    """Tasks that fail 1-2 times and succeed through the delay ladder (1-5 s a retry), and one in 5 that fails
    3 times: its retries (2) exhausted, dead-lettered `max retries exceeded` (a planned reason)."""

    name = "retries"

    def __init__(self) -> None:
        self.delay: dict[str, float] = {}
        self.exhausted: set[str] = set()
        self.last_sent = 0.0

    def done(self, soak: Soak) -> bool:
        """Every task that exhausts its retries has had its 3 attempts (2 retries of at most 5 s)."""
        return time.time() > self.last_sent + 15

    def run(self, soak: Soak, seconds: float) -> None:
        task, n = soak.app.tasks["ledger.retry"], 0
        while not soak.stop.wait(0.5):
            key, n = f"t{n}", n + 1
            fail_times, delay_s = (3 if n % 5 == 0 else soak.rng.choice([1, 2])), soak.rng.uniform(1, 5)
            try:
                task.apply_async((key, fail_times, delay_s), message_id=key)
            except RabbitTaskError:
                soak.ledger.failed.add(key)
                continue
            self.delay[key] = delay_s
            self.last_sent = time.time()
            if fail_times > 2:
                self.exhausted.add(key)
            else:
                soak.ledger.confirmed.add(key)

    def figures(self, soak: Soak) -> dict[str, str]:
        attempts: dict[str, dict[int, float]] = defaultdict(dict)  # key -> attempt -> first start
        redelivered: set[str] = set()
        for r in records(soak, "attempt"):
            times = attempts[r["key"]]
            times[r["attempt"]] = min(times.get(r["attempt"], r["t"]), r["t"])
            if r["redelivered"] or r.get("resent"):  # a retry's copy re-sent after no confirm came: same id
                redelivered.add(r["key"])
        early = sum(
            1 for key, times in attempts.items() if key in self.delay
            for a, t in times.items() if a - 1 in times and t < times[a - 1] + self.delay[key] - 0.001
        )  # fmt: skip
        ends = soak.ledger.ends()
        ran_exhausted = sorted(k for k in self.exhausted if ends.get(k))
        if early:
            soak.problems.append(f"{early} retries ran before their countdown")
        if ran_exhausted:
            soak.problems.append(f"tasks that exhaust their retries ended: {ran_exhausted[:5]}")
        soak.planned["max retries exceeded"] = len(self.exhausted)
        soak.retry_redelivered = redelivered
        total = sum(len(t) for t in attempts.values())
        return {"retries": f"{len(self.delay)} tasks, {total} attempts, {len(self.exhausted)} exhausting their "
                           f"retries; retries early: {early}"}  # fmt: skip


class Revokes:
    """Countdowns of 3-20 s revoked at once: none may run; each is dead-lettered `revoked` (a planned reason)."""

    name = "revokes"

    def __init__(self) -> None:
        self.revoked: set[str] = set()
        self.failed = 0
        self.last_due = 0.0

    def done(self, soak: Soak) -> bool:
        """Every revoked countdown is due (and so dead-lettered) by now."""
        return time.time() > self.last_due + 5

    def run(self, soak: Soak, seconds: float) -> None:
        work, n = soak.app.tasks["ledger.work"], 0
        while not soak.stop.wait(1.0):
            key, n = f"v{n}", n + 1
            try:
                countdown = soak.rng.uniform(3, 20)
                work.apply_async((key,), message_id=key, countdown=countdown)
                self.last_due = time.time() + countdown
            except RabbitTaskError:
                continue
            try:
                soak.app.control.revoke(key)
                self.revoked.add(key)
            except RabbitTaskError:
                soak.ledger.failed.add(key)  # revoked or not: may run or not
                self.failed += 1

    def figures(self, soak: Soak) -> dict[str, str]:
        ran = sorted({str(r["key"]) for r in records(soak, "start")} & self.revoked)
        if ran:
            soak.problems.append(f"{len(ran)} revoked tasks ran: {ran[:10]}")
        soak.planned["revoked"] = len(self.revoked) - len(ran)
        return {"revokes": f"{len(self.revoked)} revoked ({self.failed} revokes failed during faults), ran: {len(ran)}"}


class RateLimited:
    """`ledger.limited` (20/s across all workers) offered in bursts of 100 every 10 s: the measured rate, in
    any 5 s, must stay within 20/s + 10%."""

    name = "rate limit"

    def run(self, soak: Soak, seconds: float) -> None:
        task, n = soak.app.tasks["ledger.limited"], 0
        while not soak.stop.wait(10.0):
            keys = [f"l{n + i}" for i in range(100)]
            n += 100
            try:
                with soak.app.batch():
                    for key in keys:
                        task.apply_async((key,), message_id=key)
                soak.ledger.confirmed.update(keys)
            except RabbitTaskError:
                soak.ledger.failed.update(keys)

    def figures(self, soak: Soak) -> dict[str, str]:
        first: dict[str, float] = {}
        for r in records(soak, "start"):
            if str(r["key"]).startswith("l"):
                first[str(r["key"])] = min(first.get(str(r["key"]), r["t"]), r["t"])
        starts = sorted(first.values())
        most_1s, most_5s, j, k = 0, 0, 0, 0
        for i, t in enumerate(starts):
            while starts[j] < t - 1.0:
                j += 1
            while starts[k] < t - 5.0:
                k += 1
            most_1s, most_5s = max(most_1s, i - j + 1), max(most_5s, i - k + 1)
        if most_5s > RATE_PER_S * 5 * 1.1:  # the promise: within the limit + 10% in any 5 s window
            soak.problems.append(f"rate limit {RATE_PER_S}/s exceeded by more than 10%: {most_5s} runs started in 5 s")
        return {"rate limit": f"{len(starts)} runs of a {RATE_PER_S}/s task; most in any 5 s: {most_5s} "
                              f"({most_5s / 5:.1f}/s), in any 1 s: {most_1s}"}  # fmt: skip


class Workflows:
    """A chain of 3 steps every 2 s and a chord of 20 members every 10 s: each ends with one `collect` run
    with every result in order (a second run only where a redelivery explains it)."""

    name = "workflows"

    def __init__(self) -> None:
        self.expected: dict[str, list[int]] = {}

    def run(self, soak: Soak, seconds: float) -> None:
        t, n = soak.app.tasks, 0
        while not soak.stop.wait(2.0):
            n += 1
            tag = f"chord{n}" if n % 5 == 0 else f"chain{n}"
            last = t["ledger.collect"].s(tag=tag)
            if n % 5 == 0:
                flow: Any = chord((t["ledger.member"].s(i) for i in range(CHORD_SIZE)), last)
                want = list(range(CHORD_SIZE))
            else:
                steps = [
                    t["ledger.append"].s([], 0, tag),
                    *(t["ledger.append"].s(i, tag) for i in range(1, CHAIN_STEPS)),
                ]
                flow, want = chain(*steps, last), list(range(CHAIN_STEPS))
            try:
                flow.delay()
                self.expected[tag] = want
            except RabbitTaskError:
                pass  # not confirmed: may or may not run

    def done(self, soak: Soak) -> bool:
        """Every confirmed workflow's last step has run (the soak waits for it before judging)."""
        return set(self.expected) <= {str(r["key"]) for r in records(soak, "workflow")}

    def figures(self, soak: Soak) -> dict[str, str]:
        runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in records(soak, "workflow"):
            runs[str(r["key"])].append(r)
        steps_redelivered = {str(r["key"]) for r in records(soak, "step") if r["redelivered"] or r["resent"]}
        lost = sorted(tag for tag in self.expected if not runs[tag])
        wrong = sorted(tag for tag, want in self.expected.items() if any(r["results"] != want for r in runs[tag]))
        extra = sum(len(runs[tag]) - 1 for tag in self.expected if len(runs[tag]) > 1)
        unexplained = sorted(  # a chain's step redelivered or re-sent sends the rest again: explained
            tag
            for tag in self.expected
            if tag not in steps_redelivered and not all(r["redelivered"] or r["resent"] for r in runs[tag][1:])
        )
        for what, tags in (("lost", lost), ("with wrong results", wrong), ("run twice unexplained", unexplained)):
            if tags:
                soak.problems.append(f"workflows {what}: {tags[:5]}")
        chords = sum(tag.startswith("chord") for tag in self.expected)
        return {"workflows": f"{len(self.expected) - chords} chains, {chords} chords of {CHORD_SIZE}: last step lost "
                             f"{len(lost)}, wrong results {len(wrong)}, run twice {extra} (unexplained "
                             f"{len(unexplained)})"}  # fmt: skip
