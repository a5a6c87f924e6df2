"""Collect measurements, reduce them to medians and ratios, and print/write the table (rich, JSON, markdown)."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.cases import CHILD_PSS_TARGET_MB, RT, TOTAL_RSS_TARGET_MB, Case
from bench.row import Measurement

Key = tuple[str, str, str]  # case, queue type, implementation
COLUMNS = ["case", "queue", "rabbittask", "reference in the same run", "ratio", "target", "result"]


@dataclass
class Results:
    samples: dict[Key, list[Measurement]] = field(default_factory=dict)
    errors: dict[Key, list[str]] = field(default_factory=dict)
    loads: dict[Key, list[float]] = field(default_factory=dict)  # 1-min load average before each rep

    def add(self, key: Key, m: Measurement) -> None:
        self.samples.setdefault(key, []).append(m)

    def fail(self, key: Key, error: str) -> None:
        self.errors.setdefault(key, []).append(error)


@dataclass
class Line:
    """One table line: text cells, plus the numbers behind them for the JSON."""

    cells: list[str]
    data: dict[str, Any]


def median(ms: list[Measurement]) -> float:
    return statistics.median(m.value for m in ms)


def spread(ms: list[Measurement]) -> str:
    """Half the range of the reps, relative to their median."""
    if len(ms) < 2:
        return ""
    values = [m.value for m in ms]
    mid = statistics.median(values)
    return f" ±{(max(values) - min(values)) / 2 / mid * 100:.0f}%" if mid else ""


def show(case: Case, ms: list[Measurement]) -> str:
    if case.extra_s is not None:
        return f"{median(ms):.2f} s{spread(ms)}"
    if case.higher_is_better:
        return f"{median(ms):,.0f}{spread(ms)}"
    p99 = statistics.median(m.p99_ms or 0.0 for m in ms)
    return f"p50 {median(ms):.2f}{spread(ms)} / p99 {p99:.2f} ms"


def case_line(case: Case, queue_type: str, results: Results) -> Line:
    rt_ms = results.samples.get((case.key, queue_type, RT), [])
    refs, ratios, data_refs = [], [], {}
    for name, _ in case.references:
        ms = results.samples.get((case.key, queue_type, name), [])
        refs.append(f"{name} {show(case, ms)}" if ms else f"{name} n/a")
        data_refs[name] = median(ms) if ms else None
        if ms and rt_ms:
            ratios.append(f"{median(rt_ms) / median(ms):.2f}x")
    verdict = "—"
    ref0 = data_refs[case.references[0][0]]
    if rt_ms and ref0:
        verdict = "PASS" if case.passes(median(rt_ms), ref0) else "MISS"
    if (case.key, queue_type, RT) in results.errors:
        verdict = "ERROR"
    rt_cell = show(case, rt_ms) if rt_ms else "n/a"
    cells = [f"{case.key} {case.title}", queue_type, rt_cell, "\n".join(refs), "\n".join(ratios), case.target_text]
    data = {
        "case": case.key,
        "queue_type": queue_type,
        "unit": case.unit,
        "rabbittask": median(rt_ms) if rt_ms else None,
        "references": data_refs,
        "ratios": {n: (median(rt_ms) / v if rt_ms and v else None) for n, v in data_refs.items()},
        "target": case.target_text,
        "result": verdict,
    }
    return Line([*cells, verdict], data)


def memory_line(case: Case, queue_type: str, results: Results) -> Line | None:
    rt_ms = [m for m in results.samples.get((case.key, queue_type, RT), []) if m.memory]
    ref_name = case.references[0][0]
    ref_ms = [m for m in results.samples.get((case.key, queue_type, ref_name), []) if m.memory]
    if not rt_ms and not ref_ms:
        return None
    cell, verdict = "n/a", "—"
    if rt_ms:
        peaks = [m.memory for m in rt_ms if m.memory]
        total_rss, child_pss = max(p.total_rss for p in peaks), max(p.child_pss for p in peaks)
        within = child_pss <= CHILD_PSS_TARGET_MB and (case.key != "B1" or total_rss <= TOTAL_RSS_TARGET_MB)
        verdict = "PASS" if within else "MISS"
        cell = (
            f"child {max(p.child_rss or p.root_rss for p in peaks):.1f} RSS / {child_pss:.1f} PSS\n"
            f"supervisor {max(p.root_rss for p in peaks):.1f} RSS\n"
            f"all {max(p.total_rss for p in peaks):.1f} RSS / {max(p.total_pss for p in peaks):.1f} PSS MB"
        )
    ref = max((m.memory.root_rss for m in ref_ms if m.memory), default=0.0)
    cells = [
        f"MEM worker memory in {case.key}",
        queue_type,
        cell,
        f"(for scale: {ref_name} process {ref:.1f} RSS MB)" if ref else "—",
        "",
        f"child <= {CHILD_PSS_TARGET_MB:.0f} MB PSS; supervisor + 1 child <= {TOTAL_RSS_TARGET_MB:.0f} MB RSS",
        verdict,
    ]
    data = {
        "case": f"MEM-{case.key}",
        "queue_type": queue_type,
        "rabbittask": [asdict(m.memory) for m in rt_ms if m.memory],
        "reference_rss_mb": ref,
        "result": verdict,
    }
    return Line(cells, data)


def lines(cases: list[Case], queue_types: list[str], results: Results) -> list[Line]:
    out = [case_line(c, q, results) for c in cases for q in queue_types]
    mem = [memory_line(c, q, results) for c in cases if c.key in ("B1", "B2") for q in queue_types]
    return out + [m for m in mem if m]


def print_table(console: Console, table_lines: list[Line], title: str) -> None:
    table = Table(title=title, show_lines=True)
    for col in COLUMNS:
        table.add_column(col, justify="right" if col in ("rabbittask", "ratio") else "left")
    for line in table_lines:
        style = {"PASS": "green", "MISS": "red", "ERROR": "red"}.get(line.cells[-1], "")
        table.add_row(*line.cells[:-1], f"[{style}]{line.cells[-1]}[/]" if style else line.cells[-1])
    console.print(table)


def markdown(meta: dict[str, Any], table_lines: list[Line], notes: list[str]) -> str:
    out = ["# rabbittask bench", ""]
    out += [f"- {k}: {v}" for k, v in meta.items()]
    out += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for line in table_lines:
        out.append("| " + " | ".join(c.replace("\n", "<br>").replace("|", "\\|") for c in line.cells) + " |")
    out += ["", *[f"- {n}" for n in notes]] if notes else []
    return "\n".join(out) + "\n"


def write(directory: Path, meta: dict[str, Any], table_lines: list[Line], results: Results, notes: list[str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "case": k[0],
            "queue_type": k[1],
            "impl": k[2],
            "values": [m.value for m in ms],
            "p99_ms": [m.p99_ms for m in ms if m.p99_ms is not None],
            "memory": [asdict(m.memory) for m in ms if m.memory],
            "leftover": [m.leftover for m in ms],
            "loadavg_1m_before": results.loads.get(k, []),
        }
        for k, ms in results.samples.items()
    ]
    errors = [{"case": k[0], "queue_type": k[1], "impl": k[2], "errors": v} for k, v in results.errors.items()]
    doc = {"meta": meta, "summary": [ln.data for ln in table_lines], "rows": rows, "errors": errors, "notes": notes}
    (directory / "latest.json").write_text(json.dumps(doc, indent=2) + "\n")
    (directory / "latest.md").write_text(markdown(meta, table_lines, notes))
