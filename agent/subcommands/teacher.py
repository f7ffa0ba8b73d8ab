"""``roadside teacher train``: fine-tune a teacher model (needs torch)."""

from __future__ import annotations

import argparse
from pathlib import Path

ORDER = 20


def register(sub: argparse._SubParsersAction) -> None:
    teacher = sub.add_parser("teacher", help="teacher models (needs the train extra: torch)")
    tsub = teacher.add_subparsers(dest="teacher_command", required=True)
    train = tsub.add_parser("train", help="fine-tune a teacher and write checkpoint, manifest, report")
    train.add_argument("--task", required=True, help="a compression task that trains its own teacher "
                                                     "(compression.tasks; checked when the command runs)")
    train.add_argument("--data", help="data directory (default: $ROADSIDE_DATA or ../shared/data)")
    train.add_argument("--out", required=True, help="output folder")
    train.add_argument("--recipe", help="teacher recipe YAML (default: the task's own)")
    train.add_argument("--epochs", type=int, help="override the recipe's epochs")
    train.add_argument("--max-clips", type=int, help="use only N clips per split (smoke runs)")
    train.add_argument("--holdout", metavar="PART/PARTS", type=_holdout,
                       help="an out-of-fold teacher: deal the training recordings into PARTS parts and leave "
                            "part PART (0-based) out, e.g. 0/3 (the recipe's holdout key)")
    train.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                       help="where torch trains: a GPU when one is visible (auto, default), or the one named")
    train.set_defaults(func=run)


def _holdout(text: str) -> dict:
    part, sep, parts = text.partition("/")
    if not (sep and part.strip().isdigit() and parts.strip().isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r}: expected PART/PARTS, e.g. 0/3")
    return {"part": int(part), "parts": int(parts)}  # the recipe's schema checks the range


def run(args: argparse.Namespace) -> int:
    import sys

    from compression.tasks import get, tasks

    trainers = sorted(n for n, t in tasks().items() if t.teacher_train)
    try:
        train = get(args.task).load("teacher_train")
    except (KeyError, ValueError):
        print(f"roadside: teacher train: --task {args.task!r}: no teacher trainer (tasks with one: {trainers})",
              file=sys.stderr)
        return 2
    overrides = {k: v for k, v in {"epochs": args.epochs, "max_clips": args.max_clips,
                                   "holdout": args.holdout}.items() if v is not None}
    print(train(args.data, Path(args.out), Path(args.recipe) if args.recipe else None, device=args.device,
                **overrides))
    return 0
