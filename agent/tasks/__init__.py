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
from typing import Any, Callable, TypeVar

import numpy as np

from ..alerts import ModelInfo
from ..backends import Loaded, load_backend
from ..backends.contract import Contract, ContractError, check_embedded, load_contract, require_frontend
from ..features.level import LevelSummary

P = TypeVar("P")


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
    example_shape: tuple[int, ...] | None = None  # the input its dry run took (for the smoke test)


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
    check_embedded(contract, backend.metadata)
    extra = contract.extra
    info = ModelInfo(str(extra.get("model_name") or extra.get("name") or task),
                     str(extra.get("version") or extra.get("stage") or "0"), contract.sha256)
    return LoadedModel(contract, backend, info)


def check_frontend(contract: Contract, params: Any) -> None:
    """The device reproduces the contract's front-end exactly (its parsed params round-trip)."""
    require_frontend(contract, params.to_dict())


def frontend_params(contract: Contract, parse: Callable[[Any], P], errors: tuple[type[Exception], ...]) -> P:
    """The contract's front-end parameters, parsed (``parse``: a params class's ``from_dict``) and
    reproduced exactly (``check_frontend``); a parse error in ``errors`` becomes a ContractError
    naming the model."""
    try:
        params = parse(contract.frontend)
    except errors as e:
        raise ContractError(f"{contract.model_path}: frontend: {e}") from None
    check_frontend(contract, params)
    return params


def run_example(model: LoadedModel, example: np.ndarray) -> np.ndarray:
    """One inference on one example (batch of 1); ContractError if the model does not take its shape."""
    try:
        out = np.asarray(model.backend.run(example[None].astype(np.float32)))
    except Exception as e:  # onnxruntime raises its own exception types on a shape mismatch
        raise ContractError(f"{model.contract.model_path}: model does not accept the front-end's output "
                            f"{tuple(example.shape)} ({type(e).__name__}: {str(e)[:200]})") from None
    model.example_shape = (1, *example.shape)
    return out


def dry_run(model: LoadedModel, example: np.ndarray, out: np.ndarray | None = None) -> None:
    """The model must take the front-end's output and give one logit per label."""
    out = run_example(model, example) if out is None else out
    if out.ndim != 2 or out.shape[1] != len(model.contract.labels):
        raise ContractError(f"{model.contract.model_path}: model outputs shape {out.shape}, expected "
                            f"(1, {len(model.contract.labels)}) for labels {list(model.contract.labels)}")


class SmokeTestError(ContractError):
    """A model that loads but computes garbage on the smoke inputs."""


def smoke_test(model: LoadedModel, seed: int = 0) -> None:
    """Inference on silence-like and noise-like inputs of the dry run's shape: finite logits, one per label.

    Run on a model loaded beside the running one, before it is swapped in: a model that
    loads but computes garbage (NaN, Inf, wrong width) never replaces a working one.
    """
    if model.example_shape is None:
        raise ContractError(f"{model.contract.model_path}: smoke test before any dry run")
    rng = np.random.default_rng(seed)
    for name, x in (("zeros", np.zeros(model.example_shape, np.float32)),
                    ("noise", rng.standard_normal(model.example_shape).astype(np.float32))):
        try:
            out = np.asarray(model.backend.run(x))
        except Exception as e:
            raise SmokeTestError(f"{model.contract.model_path}: smoke inference on {name} failed "
                                f"({type(e).__name__}: {str(e)[:200]})") from None
        if out.shape != (1, len(model.contract.labels)):
            raise SmokeTestError(f"{model.contract.model_path}: smoke inference on {name} gave shape {out.shape}, "
                                f"expected (1, {len(model.contract.labels)})")
        if not np.isfinite(out).all():
            raise SmokeTestError(f"{model.contract.model_path}: smoke inference on {name} gave non-finite logits")
