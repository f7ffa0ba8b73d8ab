"""``roadside teacher train``: fine-tune a teacher model (needs torch)."""

from __future__ import annotations

import argparse
from pathlib import Path

ORDER = 20


def register(sub: argparse._SubParsersAction) -> None:
    teacher = sub.add_parser("teacher", help="teacher models (needs the train extra: torch)")
    tsub = teacher.add_subparsers(dest="teacher_command", required=True)
    train = tsub.add_parser("train", help="fine-tune a teacher and write checkpoint, manifest, report")
    train.add_argument("--task", choices=["noise"], required=True)
    train.add_argument("--data", help="data directory (default: $ROADSIDE_DATA or ../shared/data)")
    train.add_argument("--out", required=True, help="output folder")
    train.add_argument("--recipe", help="recipe YAML (default compression/recipes/noise_teacher.yaml)")
    train.add_argument("--epochs", type=int, help="override the recipe's epochs")
    train.add_argument("--max-clips", type=int, help="use only N clips per split (smoke runs)")
    train.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                       help="where torch trains: a GPU when one is visible (auto, default), or the one named")
    train.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from compression.teachers import noise

    overrides = {k: v for k, v in {"epochs": args.epochs, "max_clips": args.max_clips}.items() if v is not None}
    report = noise.run(args.data, Path(args.out), Path(args.recipe) if args.recipe else None,
                       device=args.device, **overrides)
    ft, zs = report["fine_tuned"], report["zero_shot"]
    print(f"noise teacher on {report['val_fold']}: accuracy {ft['accuracy']:.4f}, macro-F1 {ft['macro_f1']:.4f} "
          f"(zero-shot {zs['accuracy']:.4f}); fine-tuning {report['seconds']['fine_tune']} s; wrote {args.out}")
    return 0
