"""``roadside eval``: score a model (.pt checkpoint or .onnx + manifest) on a data folder."""

from __future__ import annotations

import argparse
import json

ORDER = 110


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="score a model (.pt checkpoint or .onnx + manifest) on a data folder")
    ev.add_argument("--model", required=True)
    ev.add_argument("--data", help="data folder laid out like the shared ones")
    ev.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    ev.add_argument("--threads", type=int, default=1, help="inference threads (default 1)")
    ev.add_argument("--include-training", action="store_true",
                    help="also score what the model or its teacher trained on, marked as such (left out by "
                         "default): noise folds (named under excluded, or training_folds_scored when included), "
                         "congestion's training detectors on the evaluation days (apart, under training_detectors)")
    ev.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from compression.evaluate import evaluate

    result = evaluate(args.model, args.data, threads=args.threads, include_training=args.include_training)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['task']}: n={result['n']} accuracy={result['accuracy']:.4f} macro_f1={result['macro_f1']:.4f}")
        for name, pc in result["per_class"].items():
            print(f"  {name:18s} recall {pc['recall']:.3f}  precision {pc['precision']:.3f}  n={pc['support']}")
    return 0
