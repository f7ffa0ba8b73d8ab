"""Tasks: window -> front-end -> backend -> rule, one per model the device runs.

Each task consumes one kind of sensor input (audio, camera, detector) and returns
``Detection`` and ``LevelReport`` outputs; the runtime turns them into stored messages.
Before a task starts, its model is checked against the device: the contract's task and
front-end kind must be the task's, the front-end parameters must be reproduced exactly,
and a dry run on the front-end's output shape must give one logit per label. Any
mismatch is a ``ContractError`` naming the model and the key, raised before the agent
connects to anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..alerts import ModelInfo
from ..backends import Loaded, load_backend
from ..backends.contract import Contract, ContractError, load_contract, require_frontend
from ..features.level import LevelSummary


@dataclass(frozen=True)
class Detection:
    kind: str  # task: noise | vehicles | congestion | level
    sensor: str
    cls: str
    confidence: float
    ts_ms: int  # end of the window that fired
    window_ms: int
    model: ModelInfo | None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class LevelReport:
    sensor: str
    ts_ms: int
    summary: LevelSummary
    limit_db: float | None
    period: str  # "day" | "night"


@dataclass
class LoadedModel:
    contract: Contract
    backend: Loaded
    info: ModelInfo


def load_model(task: str, frontend_kind: str, model_path: Path, backend_cfg: Any, cache_dir: Path) -> LoadedModel:
    """Contract checks that need no inference, then the backend."""
    contract = load_contract(model_path)
    if contract.task != task:
        raise ContractError(f"{model_path}: manifest task {contract.task!r}, expected {task!r}")
    kind = contract.frontend.get("kind") if isinstance(contract.frontend, dict) else None
    if kind != frontend_kind:
        raise ContractError(f"{model_path}: frontend.kind {kind!r} is not one this agent computes for {task} "
                            f"(expected {frontend_kind!r})")
    backend = load_backend(model_path, backend_cfg, cache_dir)
    extra = contract.extra
    info = ModelInfo(str(extra.get("model_name") or extra.get("name") or task),
                     str(extra.get("version") or extra.get("stage") or "0"), contract.sha256)
    return LoadedModel(contract, backend, info)


def check_frontend(contract: Contract, params: Any) -> None:
    """The device reproduces the contract's front-end exactly (its parsed params round-trip)."""
    require_frontend(contract, params.to_dict())


def run_example(model: LoadedModel, example: np.ndarray) -> np.ndarray:
    """One inference on one example (batch of 1); ContractError if the model does not take its shape."""
    try:
        return np.asarray(model.backend.run(example[None].astype(np.float32)))
    except Exception as e:  # onnxruntime raises its own exception types on a shape mismatch
        raise ContractError(f"{model.contract.model_path}: model does not accept the front-end's output "
                            f"{tuple(example.shape)} ({type(e).__name__}: {str(e)[:200]})") from None


def dry_run(model: LoadedModel, example: np.ndarray, out: np.ndarray | None = None) -> None:
    """The model must take the front-end's output and give one logit per label."""
    out = run_example(model, example) if out is None else out
    if out.ndim != 2 or out.shape[1] != len(model.contract.labels):
        raise ContractError(f"{model.contract.model_path}: model outputs shape {out.shape}, expected "
                            f"(1, {len(model.contract.labels)}) for labels {list(model.contract.labels)}")
