"""Benchmark fixtures, and a summary that puts each group's ratios side by side from the same run.

Run: .venv/bin/python -m pytest benchmarks --benchmark-json=benchmarks/results.json
A benchmark joins a comparison with ``benchmark.extra_info["compare"] = GROUP`` and
``["per"]`` (what one call processes, e.g. seconds of audio); the one marked
``["baseline"] = True`` is the reference its group's ratios are taken against.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = Path(os.environ.get("ROADSIDE_DATA", REPO.parent / "shared" / "data"))
    if not d.is_dir():
        pytest.skip(f"no data directory at {d}")
    return d


def ratio_table(benchmarks) -> dict[str, list[dict]]:
    groups: dict[str, list] = {}
    for b in benchmarks:
        if b.stats and "compare" in b.extra_info:
            groups.setdefault(b.extra_info["compare"], []).append(b)
    table = {}
    for group, items in groups.items():
        base = next((b for b in items if b.extra_info.get("baseline")), None)
        rows = []
        for b in items:
            per = b.extra_info.get("per", 1.0)
            row = {"name": b.name, "median_ms": b.stats.median * 1e3, "ms_per_unit": b.stats.median * 1e3 / per}
            if base is not None:
                row["speedup_vs_baseline"] = (base.stats.median / base.extra_info.get("per", 1.0)) / (b.stats.median / per)
            row.update({k: v for k, v in b.extra_info.items() if k in ("params", "unit")})
            rows.append(row)
        table[group] = rows
    return table


def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    table = ratio_table(session.benchmarks)
    if not table:
        return
    tr = terminalreporter
    tr.section("ratios (same run)")
    for group, rows in table.items():
        tr.write_line(f"{group}:")
        for r in rows:
            speed = f"{r['speedup_vs_baseline']:6.2f}x" if "speedup_vs_baseline" in r else "      "
            params = f"  {r['params']:>9,d} params" if "params" in r else ""
            tr.write_line(f"  {r['name']:48s} {r['ms_per_unit']:9.4f} ms per {r.get('unit', 'call')}  {speed}{params}")
    out = config.getoption("benchmark_json", None)
    if out:
        path = Path(getattr(out, "name", str(out))).with_suffix(".ratios.json")
        path.write_text(json.dumps(table, indent=2) + "\n")
        tr.write_line(f"ratios written to {path}")
