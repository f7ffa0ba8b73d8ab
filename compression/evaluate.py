"""``roadside eval``: score any model of the chain on a data folder with the same code.

A model is a PyTorch teacher checkpoint (``.pt``, its config inside) or an ONNX
file with its ``manifest.json`` beside it. Both become a ``Scorer``: the task, the
labels, the front-end it expects, and a function from features to logits. The
front-end is taken from ``agent.features`` as the model's contract describes it,
so evaluation sees exactly what the device will.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np


from compression.manifest import sha256_file

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
    outputs: Callable[[np.ndarray], dict[str, np.ndarray]] | None = None  # every named output (extra heads)
    manifest: dict = field(default_factory=dict)  # the artefact's manifest (task-specific evaluation settings)
    # folds the model or its teacher trained on (None: its manifest predates the record, so unknown)
    training_folds: list[str] | None = None


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
                      contract.window_seconds, backend, contract.sha256, "onnx",
                      outputs=_named_outputs(backend.session), manifest=contract.extra,
                      training_folds=contract.extra.get("training_folds"))
    if path.suffix == ".pt":
        import torch

        from compression.tasks import get

        torch.set_num_threads(threads)
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        task = ckpt.get("task") if isinstance(ckpt, dict) else None
        if task is None:
            raise ValueError(f"{path}: the checkpoint names no task (a dict with a 'task' key is expected)")
        entry = get(task)
        model, cfg = entry.load("checkpoint")(path)
        scorer = torch_scorer(model, cfg["task"], list(cfg["labels"]), cfg["frontend"], cfg["window_seconds"],
                              sha256_file(path))
        scorer.training_folds = entry.load("checkpoint_folds")(path) if entry.checkpoint_folds else None
        return scorer
    raise ValueError(f"{path}: unknown model type {path.suffix!r} (expected .pt or .onnx)")


def _named_outputs(session) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    names, feed = [o.name for o in session.get_outputs()], session.get_inputs()[0].name
    return lambda x: dict(zip(names, session.run(names, {feed: np.ascontiguousarray(x, dtype=np.float32)})))


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


def held_out_clips(scorer: Scorer, data: Path, clips: list, include_training: bool) -> tuple[list, dict]:
    """The clips to score and what was left out: never the folds the model (or its teacher) trained on,
    unless asked. A clip's fold is its folder's name (the data folder's own name for clips directly in it,
    so pointing ``--data`` at ``fold1`` itself does not slip past)."""
    fold_of = {id(c): c.fold or Path(data).name for c in clips}
    training = set(scorer.training_folds or [])
    seen = sorted({fold_of[id(c)] for c in clips} & training)
    info: dict = {"training_folds": scorer.training_folds if scorer.training_folds is not None else
                  "unknown: the model's manifest does not record them (every clip is scored)"}
    if include_training or not seen:
        info["training_folds_scored"] = seen
        return clips, info
    kept = [c for c in clips if fold_of[id(c)] not in training]
    info["excluded"] = {"folds": seen, "clips": len(clips) - len(kept),
                        "why": "the model or its teacher trained on them (--include-training scores them too)"}
    if not kept:
        raise ValueError(f"every clip in {data} is in a fold the model trained on ({', '.join(seen)}): nothing "
                         f"held out to score (--include-training scores them anyway, marked as training)")
    return kept, info


def evaluate(model: Path | str, data: Path | str | None, threads: int = 1, include_training: bool = False) -> dict:
    """Score a model on the held-out data of its task (compression.tasks: the evaluator and how the
    task finds its folder from a data root, the task's own folder, or a folder of its files)."""
    from compression.tasks import get

    scorer = load_scorer(model, threads=threads)
    try:
        entry = get(scorer.task)
    except KeyError as e:
        raise ValueError(f"{model}: no evaluator: {e.args[0]}") from None
    root = entry.load("data_root")(data)
    metrics = entry.load("evaluate")(scorer, root, include_training=include_training)
    metrics.pop("logits", None)
    head = {"task": scorer.task, "n": metrics.pop("n"), "accuracy": metrics.pop("accuracy"),
            "macro_f1": metrics.pop("macro_f1"), "per_class": metrics.pop("per_class")}
    return {**head, **metrics, "model": str(model), "model_kind": scorer.kind,
            "model_sha256": scorer.sha256, "data": str(root)}
