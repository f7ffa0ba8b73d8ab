"""Inference backends, registered by the ``type:`` key of a task's ``backend:`` config.

``onnxruntime`` runs everywhere (CPU). ``tensorrt`` builds and caches an engine from the
shipped ONNX on first start (``agent.backends.tensorrt``); where TensorRT is not
importable or refuses the model, the task falls back to onnxruntime and the reason is
logged and reported in the state message, never a crash. Heavy imports happen inside
the factories, so a device without TensorRT never imports it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)


class BackendUnavailable(RuntimeError):
    """A backend that cannot run on this device (SDK missing, engine build failed)."""


@dataclass
class Loaded:
    run: Callable[[np.ndarray], np.ndarray]  # float32 batch -> logits
    name: str  # the backend actually running
    fallback_reason: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)  # the ONNX file's own, where the backend reads it


def _onnxruntime(model_path: Path, cfg: Any, cache_dir: Path) -> Loaded:
    from .onnx import OnnxBackend

    backend = OnnxBackend(model_path, threads=cfg.threads)
    return Loaded(backend, "onnxruntime", metadata=dict(backend.session.get_modelmeta().custom_metadata_map))


def tensorrt_onnx(model_path: Path) -> Path:
    """The ONNX the manifest ships for TensorRT (``targets.tensorrt.file``: the symmetric INT8 QDQ
    model when it passed the gate, else the task's model), checked against its sha256."""
    from .contract import load_contract

    targets = load_contract(model_path).extra.get("targets") or {}
    name = (targets.get("tensorrt") or {}).get("file")
    if not name or name == model_path.name:
        return model_path
    trt = model_path.with_name(name)
    load_contract(trt)  # a missing, unlisted or altered file is refused here
    return trt


def _tensorrt(model_path: Path, cfg: Any, cache_dir: Path) -> Loaded:
    from .contract import ContractError

    try:
        from .tensorrt import TensorRTBackend

        engine = TensorRTBackend(tensorrt_onnx(model_path), cache_dir=Path(cfg.cache_dir or cache_dir),
                                 fp16=cfg.fp16, dla_core=cfg.dla_core)
        return Loaded(engine, "tensorrt")
    except (ImportError, BackendUnavailable, ContractError) as e:
        reason = f"{type(e).__name__}: {e}"
        log.warning("%s: TensorRT unavailable (%s); falling back to onnxruntime", model_path.name, reason)
        loaded = _onnxruntime(model_path, cfg, cache_dir)
        loaded.fallback_reason = reason
        return loaded


BACKENDS: dict[str, Callable[[Path, Any, Path], Loaded]] = {
    "onnxruntime": _onnxruntime,
    "tensorrt": _tensorrt,
}


def load_backend(model_path: Path, cfg: Any, cache_dir: Path) -> Loaded:
    """The backend the config's ``type:`` names (``cfg`` is its config section)."""
    try:
        factory = BACKENDS[cfg.type]
    except KeyError:
        raise BackendUnavailable(f"backend.type {cfg.type!r} unknown (known: {sorted(BACKENDS)})") from None
    return factory(model_path, cfg, cache_dir)
