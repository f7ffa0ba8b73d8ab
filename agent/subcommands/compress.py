"""``roadside compress``: a recipe's chain (distil, prune, quantise, export, gate) for one student (needs torch)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ORDER = 30


def register(sub: argparse._SubParsersAction) -> None:
    comp = sub.add_parser("compress", help="distil, prune, quantise and export a student (needs torch)")
    comp.add_argument("--recipe", required=True, help="recipe YAML, e.g. compression/recipes/noise.yaml")
    comp.add_argument("--data", help="data directory (default: $ROADSIDE_DATA or ../shared/data)")
    comp.add_argument("--out", help="shipped folder (default agent/models/<task>)")
    comp.add_argument("--work", help="intermediate checkpoints (default runs/<name>)")
    comp.add_argument("--set", action="append", metavar="KEY=VALUE",
                      help="override a recipe key, e.g. --set distil.epochs=1 (validated like the file)")
    comp.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                      help="where torch trains: a GPU when one is visible (auto, default), or the one named")
    comp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from compression import pipeline
    from compression.chain import gate

    overrides = dict(parse_set(kv) for kv in args.set or [])
    try:
        report = pipeline.run(Path(args.recipe), args.data, Path(args.out) if args.out else None,
                              Path(args.work) if args.work else None, device=args.device, **overrides)
    except gate.GateFailed as e:
        print(f"roadside: {e}", file=sys.stderr)
        return 3
    for name, st in report["stages"].items():
        print(stage_line(name, st, report.get("latency_unit", "")))
    # a tuning run that ships nothing says what it produced instead
    print(report.get("outcome") or f"gate passed; shipped {report['shipped']}")
    return 0


def stage_line(name: str, st: dict, latency_unit: str = "") -> str:
    """One stage's figures: its compute (a ``macs_per_<input>`` figure, where the task counts one) and its
    latency, in the unit the run's report names (``latency_unit``, e.g. "per s of audio")."""
    lat = st.get("latency", {}).get("total_ms")
    macs = next(((k.removeprefix("macs_per_"), v) for k, v in st.items() if k.startswith("macs_per_")), None)
    return (f"{name:14s} accuracy {st['accuracy']:.4f}  macro-F1 {st['macro_f1']:.4f}  params {st['params']:>7d}  "
            + (f"{macs[1] / 1e6:6.2f} M MACs per {macs[0]}" if macs is not None else "")
            + (f"  {lat:.3f} ms {latency_unit}" if lat else ""))


def parse_set(kv: str) -> tuple[str, object]:
    """``--set a.b=VALUE``: the dotted key and VALUE read as YAML (so 1 is an int, true a bool)."""
    import yaml

    if "=" not in kv:
        raise ValueError(f"--set takes KEY=VALUE (dotted key), got {kv!r}")
    key, value = kv.split("=", 1)
    return key, yaml.safe_load(value)
