"""ONNX export with the feature contract inside the file.

The contract (task, labels, front-end, clip/window length, version) is stored both
in the ONNX ``metadata_props`` and in the manifest beside the file, so a model
copied without its manifest still says what it expects.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from agent.backends.contract import EMBEDDED_KEY

OPSET = 17  # supported by onnxruntime >= 1.12 and by TensorRT 8.6 / 10 (JetPack 5 and 6)
CONTRACT_KEY = EMBEDDED_KEY  # the agent checks it against the manifest (agent.backends.contract)


class _FirstOutput(nn.Module):
    """Models that return (logits, extras) export only their logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out[0] if isinstance(out, (tuple, list)) else out


class _Outputs(nn.Module):
    """Models with extra heads export their first ``n`` outputs, the logits first."""

    def __init__(self, model: nn.Module, n: int):
        super().__init__()
        self.model, self.n = model, n

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model(x)[:self.n])


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, contract: dict[str, Any],
                dynamic_batch: bool = True, output_names: tuple[str, ...] = ("logits",)) -> Path:
    """Export ``model`` in eval mode to ``path`` (input ``features``, output ``logits``; with more
    ``output_names``, the model's first outputs under those names, ``logits`` first: the agent reads it)."""
    if output_names[0] != "logits":
        raise ValueError(f"the first output must be 'logits' (the one the agent reads), got {output_names}")
    # a fresh wrapper is in train mode: BN would use batch stats
    wrapper = (_FirstOutput(model) if len(output_names) == 1 else _Outputs(model, len(output_names))).eval()
    axes = {"features": {0: "batch"}, **{n: {0: "batch"} for n in output_names}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter about tracing, not about this model
        # The TorchScript exporter gives a plain, stable graph that onnxruntime's
        # quantiser and TensorRT's parser both take as is.
        torch.onnx.export(wrapper, (example,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["features"], output_names=list(output_names), dynamic_axes=axes)
    return stamp_contract(path, contract)


def stamp_contract(path: Path, contract: dict[str, Any], out: Path | None = None) -> Path:
    """Write ``contract`` into the ONNX metadata (``roadside.contract``) of ``path``, or of a copy at ``out``."""
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    proto.metadata_props.add(key=CONTRACT_KEY, value=json.dumps(contract, sort_keys=True))
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out or path))
    return Path(out or path)


def read_contract(path: Path) -> dict[str, Any] | None:
    for prop in onnx.load(str(path), load_external_data=False).metadata_props:
        if prop.key == CONTRACT_KEY:
            return json.loads(prop.value)
    return None
