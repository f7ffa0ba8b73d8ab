"""``roadside eval``: score any model of the chain on a data folder with the same code.

A model is a PyTorch teacher checkpoint (``.pt``, its config inside) or an ONNX
file with its ``manifest.json`` beside it. Both become a ``Scorer``: the task, the
labels, the front-end it expects, and a function from features to logits. The
front-end is taken from ``agent.features`` as the model's contract describes it,
so evaluation sees exactly what the device will.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from agent.features.audio import LogMelParams, log_mel

from .datasets import urbansound
from .manifest import sha256_file
from .metrics import classification_report, topk_accuracy

log = logging.getLogger(__name__)


@dataclass
class Scorer:
    task: str
    labels: list[str]
    frontend: dict
    window_seconds: float
    logits: Callable[[np.ndarray], np.ndarray]  # (B, 1, F, T) float32 -> (B, C)
    sha256: str
    kind: str  # "torch" | "onnx"


def load_scorer(path: Path | str, threads: int = 1) -> Scorer:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model not found: {path}")
    if path.suffix == ".onnx":
        from agent.backends.contract import load_contract
        from agent.backends.onnx import OnnxBackend

        contract = load_contract(path)
        backend = OnnxBackend(path, threads=threads)
        return Scorer(contract.task, list(contract.labels), contract.frontend,
                      contract.window_seconds, backend, contract.sha256, "onnx")
    if path.suffix == ".pt":
        import torch

        from .teachers.noise import load_checkpoint

        torch.set_num_threads(threads)
        model, cfg = load_checkpoint(path)
        return torch_scorer(model, cfg["task"], list(cfg["labels"]), cfg["frontend"], cfg["window_seconds"],
                            sha256_file(path))
    raise ValueError(f"{path}: unknown model type {path.suffix!r} (expected .pt or .onnx)")


def torch_scorer(model, task: str, labels: list[str], frontend: dict, window_seconds: float,
                 sha256: str = "") -> Scorer:
    """A PyTorch model in memory (any stage of the chain) as a Scorer."""
    import torch

    model.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model(torch.from_numpy(x))
        return (out[0] if isinstance(out, (tuple, list)) else out).numpy()

    return Scorer(task, labels, frontend, window_seconds, run, sha256, "torch")


def evaluate_noise(scorer: Scorer, data: Path, batch: int = 32, clips: list | None = None) -> dict:
    """Clips named like UrbanSound8K's, in fold folders of any name or directly in ``data``
    (or exactly ``clips``), scored with the front-end the model's contract names."""
    params = LogMelParams.from_dict(scorer.frontend)
    clips = urbansound.list_clips(data) if clips is None else clips
    if not clips:
        raise ValueError(f"no clips named like UrbanSound8K's (fsID-classID-occurrence-slice.flac) in {data}")
    scores, kept, skipped = [], [], 0
    for i in range(0, len(clips), batch):
        waves, ok, n_bad = urbansound.load_clips(clips[i:i + batch], sample_rate=params.sample_rate,
                                                 seconds=scorer.window_seconds, progress=False)
        skipped += n_bad
        if not ok:
            continue
        x = np.stack([log_mel(w, params) for w in waves])[:, None]
        scores.append(scorer.logits(x))
        kept.extend(ok)
    logits = np.concatenate(scores)
    y = np.array([c.label for c in kept])
    pred = logits.argmax(1)
    result = classification_report(y, pred, scorer.labels)
    folds = sorted({c.fold for c in kept})
    result["top3_accuracy"] = topk_accuracy(y, logits, 3)
    result["per_fold"] = {f or ".": float((pred[[c.fold == f for c in kept]] ==
                                           y[[c.fold == f for c in kept]]).mean()) for f in folds}
    result["skipped"] = skipped
    result["logits"] = logits  # for agreement between stages; dropped from the CLI's JSON
    return result


EVALUATORS: dict[str, Callable[[Scorer, Path], dict]] = {"noise": evaluate_noise}
# Each task finds its folder from a data root, the task's own folder, or a folder of its files.
DATA_ROOTS: dict[str, Callable[[Path | str | None], Path]] = {"noise": urbansound.find_root}


def evaluate(model: Path | str, data: Path | str | None, threads: int = 1) -> dict:
    scorer = load_scorer(model, threads=threads)
    if scorer.task not in EVALUATORS:
        raise ValueError(f"{model}: no evaluator for task {scorer.task!r} (known: {sorted(EVALUATORS)})")
    root = DATA_ROOTS[scorer.task](data)
    metrics = EVALUATORS[scorer.task](scorer, root)
    metrics.pop("logits", None)
    head = {"task": scorer.task, "n": metrics.pop("n"), "accuracy": metrics.pop("accuracy"),
            "macro_f1": metrics.pop("macro_f1"), "per_class": metrics.pop("per_class")}
    return {**head, **metrics, "model": str(model), "model_kind": scorer.kind,
            "model_sha256": scorer.sha256, "data": str(root)}
