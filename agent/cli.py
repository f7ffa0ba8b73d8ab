"""The ``roadside`` command.

The device has no torch, so everything under ``compression`` is imported inside
the subcommand that needs it, never at the top of this file.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import __version__

log = logging.getLogger("roadside")


def _cmd_teacher_train(args: argparse.Namespace) -> int:
    from compression.teachers import noise

    overrides = {k: v for k, v in {"epochs": args.epochs, "max_clips": args.max_clips}.items() if v is not None}
    report = noise.run(args.data, Path(args.out), Path(args.recipe) if args.recipe else None, **overrides)
    ft, zs = report["fine_tuned"], report["zero_shot"]
    print(f"noise teacher on {report['val_fold']}: accuracy {ft['accuracy']:.4f}, macro-F1 {ft['macro_f1']:.4f} "
          f"(zero-shot {zs['accuracy']:.4f}); fine-tuning {report['seconds']['fine_tune']} s; wrote {args.out}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from compression.evaluate import evaluate

    result = evaluate(args.model, args.data, threads=args.threads)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['task']}: n={result['n']} accuracy={result['accuracy']:.4f} macro_f1={result['macro_f1']:.4f}")
        for name, pc in result["per_class"].items():
            print(f"  {name:18s} recall {pc['recall']:.3f}  precision {pc['precision']:.3f}  n={pc['support']}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(duration=args.duration, data=args.data)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="roadside", description="Edge inference for smart-city roadside units.")
    p.add_argument("--version", action="version", version=f"roadside {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="play a street scene through the device's front-ends")
    demo.add_argument("--duration", type=float, default=20.0, help="seconds of audio to play (default 20)")
    demo.add_argument("--data", help="data directory (default: $ROADSIDE_DATA or ../shared/data)")
    demo.set_defaults(func=_cmd_demo)

    teacher = sub.add_parser("teacher", help="teacher models (needs the train extra: torch)")
    tsub = teacher.add_subparsers(dest="teacher_command", required=True)
    train = tsub.add_parser("train", help="fine-tune a teacher and write checkpoint, manifest, report")
    train.add_argument("--task", choices=["noise"], required=True)
    train.add_argument("--data", help="data directory (default: $ROADSIDE_DATA or ../shared/data)")
    train.add_argument("--out", required=True, help="output folder")
    train.add_argument("--recipe", help="recipe YAML (default compression/recipes/noise_teacher.yaml)")
    train.add_argument("--epochs", type=int, help="override the recipe's epochs")
    train.add_argument("--max-clips", type=int, help="use only N clips per split (smoke runs)")
    train.set_defaults(func=_cmd_teacher_train)

    ev = sub.add_parser("eval", help="score a model (.pt checkpoint or .onnx + manifest) on a data folder")
    ev.add_argument("--model", required=True)
    ev.add_argument("--data", help="data folder laid out like the shared ones")
    ev.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    ev.add_argument("--threads", type=int, default=1, help="inference threads (default 1)")
    ev.set_defaults(func=_cmd_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Logs and progress bars go to stderr: stdout is for results (``eval --json``).
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError) as e:
        # Bad input is the user's to fix: say what was wrong, without a traceback.
        print(f"roadside: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
