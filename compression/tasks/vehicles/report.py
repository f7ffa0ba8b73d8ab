"""What the vehicles chain measures and gates beyond the shared tail: latency per crop (one real image
through the device's front-end and onnxruntime on one thread), the compute budget and the accuracy floor."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.features.image import ImageParams, preprocess

from compression.chain.gate import accuracy_and_params
from compression.latency import _median_ms

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


def check(recipe, teacher: dict, shipped: dict) -> list[str]:
    """Reasons the shipped model fails (empty when it passes). Accuracy in points (0..100)."""
    failures = accuracy_and_params(recipe, teacher, shipped)
    if recipe.gate.min_accuracy is not None and 100 * shipped["accuracy"] < recipe.gate.min_accuracy:
        failures.append(f"accuracy {100 * shipped['accuracy']:.2f} % < gate.min_accuracy {recipe.gate.min_accuracy}")
    if shipped["macs_per_image"] > recipe.budget.max_macs_per_image:
        failures.append(f"{shipped['macs_per_image'] / 1e6:.2f} M MACs per crop > "
                        f"budget.max_macs_per_image {recipe.budget.max_macs_per_image / 1e6:.2f} M")
    return failures


def relative(items, root: Path) -> list[list]:
    return [[Path(p).relative_to(root).as_posix(), int(y)] for p, y in items]
