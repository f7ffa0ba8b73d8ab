"""Benchmark fixtures, and a summary of the run: ratios side by side, plus the agent's measurements.

Run: .venv/bin/python -m pytest benchmarks --benchmark-json=benchmarks/results.json
Besides pytest-benchmark's JSON, the summary is printed at the end and written beside it
as ``results.summary.json`` and ``results.summary.md``.

A benchmark joins a comparison with ``benchmark.extra_info["compare"] = GROUP`` and
``["per"]`` (units one call processes, e.g. seconds of audio) and ``["unit"]``; the one
marked ``["baseline"] = True`` is the reference of its group's ratios. A benchmark that
measures something other than its own call time (streams per core, bytes per day) puts
its figures in ``extra_info["record"]`` (a flat dict), printed as they are.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = Path(os.environ.get("ROADSIDE_DATA") or REPO.parent / "shared" / "data")
    if not d.is_dir():
        pytest.skip(f"no data directory at {d} (set ROADSIDE_DATA)")
    return d


def ratio_table(benchmarks) -> dict[str, list[dict]]:
    groups: dict[str, list] = {}
    for b in benchmarks:
        if b.stats and "compare" in b.extra_info:
            groups.setdefault(b.extra_info["compare"], []).append(b)
    table = {}
    for group in sorted(groups):
        items = groups[group]
        base = next((b for b in items if b.extra_info.get("baseline")), None)
        rows = []
        for b in items:
            per = b.extra_info.get("per", 1.0)
            ms = b.stats.median * 1e3 / per
            row = {"name": b.name, "median_ms": b.stats.median * 1e3, "ms_per_unit": ms, "units_per_s": 1e3 / ms}
            if base is not None:
                row["speedup_vs_baseline"] = (base.stats.median / base.extra_info.get("per", 1.0)) / (b.stats.median / per)
            row.update({k: v for k, v in b.extra_info.items() if k in ("params", "unit", "lineage")})
            rows.append(row)
        table[group] = rows
    return table


def records(benchmarks) -> dict[str, dict]:
    return {b.name: b.extra_info["record"] for b in benchmarks if "record" in b.extra_info}


def _lines(table: dict, recs: dict) -> list[str]:
    out = []
    for group, rows in table.items():
        out.append(f"{group}:")
        for r in rows:
            speed = f"{r['speedup_vs_baseline']:6.2f}x" if "speedup_vs_baseline" in r else "       "
            params = f"{r['params']:>10,d} params" if r.get("params") else ""
            lineage = f"   [{r['lineage']}]" if r.get("lineage") else ""
            out.append(f"  {r['name']:38s} {r['ms_per_unit']:10.4f} ms per {r.get('unit', 'call'):10s} {speed}  "
                       f"{params}{lineage}")
    for name, rec in recs.items():
        out.append(f"{name}:")
        out += [f"  {k}: {v}" for k, v in rec.items()]
    return out


def _markdown(table: dict, recs: dict) -> str:
    md = ["# Benchmark summary (one run; see the JSON beside it for every statistic)", ""]
    for group, rows in table.items():
        md += [f"## {group}", "", "| model | ms per unit | units/s | vs teacher | params | from |", "|---|---|---|---|---|---|"]
        for r in rows:
            speed = f"{r['speedup_vs_baseline']:.2f}x" if "speedup_vs_baseline" in r else ""
            md.append(f"| {r['name']} | {r['ms_per_unit']:.4f} | {r['units_per_s']:,.0f} | {speed} | "
                      f"{r.get('params') or ''} | {r.get('lineage', '')} |")
        md.append("")
    for name, rec in recs.items():
        md += [f"## {name}", ""] + [f"- {k}: {v}" for k, v in rec.items()] + [""]
    return "\n".join(md)


def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    table, recs = ratio_table(session.benchmarks), records(session.benchmarks)
    if not table and not recs:
        return
    tr = terminalreporter
    tr.section("summary (same run)")
    for line in _lines(table, recs):
        tr.write_line(line)
    out = config.getoption("benchmark_json", None)
    if out:
        path = Path(out).resolve()
        as_json, as_md = path.with_name(path.stem + ".summary.json"), path.with_name(path.stem + ".summary.md")
        as_json.write_text(json.dumps({"ratios": table, "records": recs}, indent=2) + "\n")
        as_md.write_text(_markdown(table, recs) + "\n")
        tr.write_line(f"summary written to {as_json} and {as_md}")
