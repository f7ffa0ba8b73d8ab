"""Scoring, gate and artefacts of the vehicles chain.

Every stage is scored by ``compression.evaluate.evaluate_vehicles`` (what ``roadside
eval`` runs) on the same held-out crops, and timed per crop on one real image through
the device's front-end and onnxruntime on one thread.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from agent.features.image import ImageParams, preprocess

from .. import gate
from ..evaluate import Scorer, evaluate_vehicles
from ..latency import _median_ms
from ..manifest import sha256_json, write_manifest
from ..pipeline import int8_weight_bytes
from ..report import plot_accuracy_latency, plot_confusion, ship_models, write_json

log = logging.getLogger(__name__)
LICENCE = ('trained on "A Dataset Containing Tiny and Low Quality Images for Vehicle Classification" '
           "(Zenodo 6634554), CC BY 4.0: attribution required")


def per_image(onnx_path: Path, frontend: dict, image: np.ndarray, repeats: int = 50) -> dict[str, float]:
    """ms per crop (uint8 RGB as the camera gives it): front-end, model, total; one thread, median."""
    from agent.backends.onnx import OnnxBackend

    params = ImageParams.from_dict(frontend)
    backend = OnnxBackend(onnx_path, threads=1)
    x = preprocess(image, params)[None]
    fe = _median_ms(lambda: preprocess(image, params), repeats)
    model = _median_ms(lambda: backend(x), repeats)
    return {"frontend_ms": fe, "model_ms": model, "total_ms": fe + model}


class Stages:
    """Collects each stage's measured numbers, in order."""

    def __init__(self, val_items: list, root: Path, image: np.ndarray):
        self.val_items, self.root, self.image = val_items, root, image  # one real crop for latency
        self.results: dict[str, dict] = {}

    def score(self, name: str, scorer: Scorer, onnx_path: Path | None, params: int, macs: int) -> dict:
        metrics = evaluate_vehicles(scorer, self.root, items=self.val_items)
        entry = {k: metrics[k] for k in ("n", "accuracy", "macro_f1", "per_class", "confusion", "skipped")}
        entry.update(params=params, macs_per_image=macs, frontend=scorer.frontend)
        if onnx_path is not None:
            entry["latency"] = per_image(onnx_path, scorer.frontend, self.image)
            entry["onnx_bytes"] = onnx_path.stat().st_size
            entry["int8_weight_bytes"] = int8_weight_bytes(onnx_path)
        entry["_logits"] = metrics["logits"]
        self.results[name] = entry
        log.info("%s: accuracy %.4f, macro-F1 %.4f, %d params, %.2f M MACs%s", name, entry["accuracy"],
                 entry["macro_f1"], params, macs / 1e6,
                 f", {entry['latency']['total_ms']:.3f} ms per crop" if onnx_path else "")
        return entry

    def agreement(self, a: str, b: str) -> float:
        return float((self.results[a]["_logits"].argmax(1) == self.results[b]["_logits"].argmax(1)).mean())


def check(recipe, teacher: dict, shipped: dict) -> list[str]:
    """Reasons the shipped model fails (empty when it passes). Accuracy in points (0..100)."""
    failures = gate.accuracy_and_params(recipe, teacher, shipped)
    if recipe.gate.min_accuracy is not None and 100 * shipped["accuracy"] < recipe.gate.min_accuracy:
        failures.append(f"accuracy {100 * shipped['accuracy']:.2f} % < gate.min_accuracy {recipe.gate.min_accuracy}")
    if shipped["macs_per_image"] > recipe.budget.max_macs_per_image:
        failures.append(f"{shipped['macs_per_image'] / 1e6:.2f} M MACs per crop > "
                        f"budget.max_macs_per_image {recipe.budget.max_macs_per_image / 1e6:.2f} M")
    return failures


def relative(items, root: Path) -> list[list]:
    return [[Path(p).relative_to(root).as_posix(), int(y)] for p, y in items]


def write_artefacts(recipe, recipe_path, out: Path, stages: Stages, chosen: dict, shipped_name: str,
                    contract: dict, failures: list[str], extra_report: dict, lists: dict[str, list],
                    inputs: dict) -> dict:
    """model.onnx (+ model_trt.onnx), report.json, confusion.png, accuracy_latency.png, manifest.json."""
    results = {k: {kk: vv for kk, vv in v.items() if kk != "_logits"} for k, v in stages.results.items()}
    shipped = results[shipped_name]
    files, targets = ship_models(out, chosen["cpu"], chosen["tensorrt"],
                                 "int8" if shipped_name.startswith("int8") else "fp32", contract)
    model_path = files[0]
    report = {
        "task": recipe.task, "name": recipe.name, "version": recipe.version,
        "gate": {"passed": not failures, "failures": failures, "max_drop": recipe.gate.max_drop,
                 "min_accuracy": recipe.gate.min_accuracy},
        "shipped": {"cpu": shipped_name, "tensorrt": "int8_tensorrt" if chosen["tensorrt"] else shipped_name},
        "targets": targets,
        "int8_tensorrt_rejected": chosen.get("tensorrt_rejected", []),
        "stages": results, **extra_report,
        "calibration_images": lists["calibration"],
        "licence": LICENCE,
    }
    files.append(write_json(report, out / "report.json"))
    files.append(plot_confusion(shipped["confusion"], contract["labels"], out / "confusion.png",
                                f"{recipe.name} ({shipped_name}), validation split: "
                                f"accuracy {shipped['accuracy']:.3f}"))
    files.append(plot_accuracy_latency(results, out / "accuracy_latency.png", recipe.name,
                                       xlabel="ms per crop (front-end + model, 1 thread)",
                                       ylabel="accuracy on the validation split (%)"))
    write_manifest(
        out, stage="compress", files=files, inputs=inputs, recipe=recipe.model_dump(),
        data_lists={k: v if isinstance(v, str) else sha256_json(v) for k, v in lists.items()},  # split: its own sha
        extra={**contract, "targets": targets, "params": shipped["params"],
               "macs_per_image": shipped["macs_per_image"], "size_bytes": model_path.stat().st_size,
               "metrics": {k: {m: v.get(m) for m in ("accuracy", "macro_f1", "latency", "params")}
                           for k, v in results.items()},
               "gate_passed": not failures, "licence": LICENCE},
    )
    return report
