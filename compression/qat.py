"""Quantisation-aware training for TensorRT: the fallback when post-training INT8 loses too much.

Every Conv2d and Linear gets fake quantisation of its input (per tensor) and of its weight (per
output channel), signed INT8, symmetric, zero point 0: the explicit-quantisation form TensorRT
builds INT8 kernels from. Input ranges come from the calibration features (a high percentile
of |x|, as post-training calibration does) and stay fixed; weight ranges follow the weights
while training and are frozen for export. The network is then fine-tuned by the same
distillation, so it learns to live with the rounding (gradients pass the rounding straight
through). Exported, each fake quantiser is a QuantizeLinear/DequantizeLinear pair with constant
scales; onnxruntime runs that graph on the CPU to score it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from compression.quantise import kept_in_float

QMIN, QMAX = -128, 127


def _fake_quant(x: torch.Tensor, amax: float) -> torch.Tensor:
    return torch.fake_quantize_per_tensor_affine(x, max(amax, 1e-8) / QMAX, 0, QMIN, QMAX)


class _WeightQuant(nn.Module):
    """Per-output-channel symmetric INT8 for a weight; the range tracks the weight until ``freeze``."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("amax", weight.detach().abs().flatten(1).amax(1).clamp_min(1e-8))
        self.register_buffer("zero", torch.zeros(weight.shape[0], dtype=torch.int32))
        self.frozen = False

    def freeze(self, weight: torch.Tensor) -> None:
        self.amax = weight.detach().abs().flatten(1).amax(1).clamp_min(1e-8)
        self.frozen = True

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        amax = self.amax if self.frozen else w.detach().abs().flatten(1).amax(1).clamp_min(1e-8)
        return torch.fake_quantize_per_channel_affine(w, amax / QMAX, self.zero, 0, QMIN, QMAX)


class QuantLayer(nn.Module):
    """A Conv2d or Linear with its input and weight fake-quantised."""

    def __init__(self, layer: nn.Conv2d | nn.Linear, input_amax: float):
        super().__init__()
        self.layer, self.input_amax = layer, float(input_amax)
        self.weight_quant = _WeightQuant(layer.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w = _fake_quant(x, self.input_amax), self.weight_quant(self.layer.weight)
        if isinstance(self.layer, nn.Conv2d):
            return self.layer._conv_forward(x, w, self.layer.bias)
        return F.linear(x, w, self.layer.bias)


def input_ranges(model: nn.Module, calibration: np.ndarray, percentile: float, batch: int = 16,
                 sample: int = 200_000, seed: int = 0) -> dict[str, float]:
    """Each Conv2d/Linear's input |x| at ``percentile``, over a random sample of the calibration activations."""
    gen = torch.Generator().manual_seed(seed)
    seen: dict[str, list[torch.Tensor]] = {}

    def hook(name):
        def grab(_m, args):
            v = args[0].detach().abs().flatten()
            if v.numel() > sample:
                v = v[torch.randint(v.numel(), (sample,), generator=gen)]
            seen.setdefault(name, []).append(v)
        return grab

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for s in range(0, len(calibration), batch):
                model(torch.from_numpy(calibration[s:s + batch]))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {n: float(torch.quantile(torch.cat(v)[:16_000_000], percentile / 100)) for n, v in seen.items()}


def onnx_node_name(model: nn.Module, module_path: str) -> str:
    """The name the ONNX export (compression.export) gives the layer at ``module_path``, so the
    recipe's ``keep_float`` patterns over node names select the same layers here as in
    post-training quantisation. The exporter's wrapper is ``model``; every module that is called
    adds a scope, named by its dotted path from the nearest non-numeric attribute
    (``body.features.1.block.0.0`` -> ``/model/body/features/features.1/block/block.0/block.0.0/Conv``);
    ModuleLists are iterated, never called, so they add none."""
    parts, scopes, start, node = module_path.split("."), [], 0, model
    for i, part in enumerate(parts):
        node = getattr(node, part) if not part.isdigit() else node[int(part)]
        if not part.isdigit():
            start = i
        if not isinstance(node, (nn.ModuleList, nn.ModuleDict)):
            scopes.append(".".join(parts[start:i + 1]))
    return "/" + "/".join(["model", *scopes, "Conv" if isinstance(node, nn.Conv2d) else "Gemm"])


def prepare(model: nn.Module, calibration: np.ndarray, percentile: float = 99.99,
            keep_float: Sequence[str] = ()) -> int:
    """Wrap every Conv2d and Linear of ``model`` in place with fake quantisers, except those whose
    ONNX node name a ``keep_float`` pattern matches (re.search); returns how many were wrapped."""
    if len(calibration) == 0:
        raise ValueError("qat: no calibration features (data.calibration_clips found no readable clips)")
    ranges = input_ranges(model, calibration, percentile)
    names = {n: onnx_node_name(model, n) for n in ranges}
    floats = set(kept_in_float(list(names.values()), keep_float, "no layer of the QAT model"))
    wrapped = 0
    for full, amax in ranges.items():
        if names[full] in floats:
            continue
        parent_name, _, child_name = full.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child_name, QuantLayer(getattr(parent, child_name), amax))
        wrapped += 1
    return wrapped


def freeze(model: nn.Module) -> None:
    """Fix the weight ranges (constant scales in the exported graph, as TensorRT requires)."""
    for m in model.modules():
        if isinstance(m, QuantLayer):
            m.weight_quant.freeze(m.layer.weight)
