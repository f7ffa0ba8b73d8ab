"""Post-training INT8 with onnxruntime static quantisation: QDQ, per-channel weights, real calibration clips.

Two flavours, because the targets want different things:
- ``cpu``: uint8 activations (asymmetric) and int8 weights. onnxruntime's CPU provider
  fuses DequantizeLinear -> Conv -> ReLU -> QuantizeLinear into QLinearConv here;
- ``tensorrt``: int8 activations *and* weights, symmetric (zero point 0), which is the
  only form TensorRT's explicit quantisation accepts.
Whether INT8 pays on a target is decided by measured latency, not assumed. When the symmetric
form loses more than the gate allows, ``compression/qat.py`` (quantisation-aware training) is
the fallback for TensorRT (``quantise.qat_epochs``).
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np
import onnx
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

log = logging.getLogger(__name__)
Flavour = Literal["cpu", "tensorrt"]
_METHODS = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy}


class _Batches(CalibrationDataReader):
    """Feeds the calibration features one clip at a time (the exported batch axis is dynamic)."""

    def __init__(self, features: np.ndarray, input_name: str):
        self._it: Iterator[dict[str, np.ndarray]] = (
            {input_name: features[i:i + 1].astype(np.float32)} for i in range(len(features)))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def quantise(fp32: Path, out: Path, calibration: np.ndarray, flavour: Flavour,
             method: str = "percentile", percentile: float = 99.999, input_name: str = "features",
             keep_float: Sequence[str] = ()) -> Path:
    """INT8 QDQ copy of ``fp32`` at ``out``, calibrated on ``calibration`` (N, 1, F, T) features.

    ``keep_float``: regular expressions over node names left in float (mixed precision); each
    must match at least one node, so a renamed layer cannot silently turn the option off."""
    if len(calibration) == 0:
        raise ValueError("quantise: no calibration features (data.calibration_clips found no readable clips)")
    if not np.all(np.isfinite(calibration)):
        raise ValueError("quantise: calibration features contain NaN or infinity")
    symmetric = flavour == "tensorrt"
    extra = {"ActivationSymmetric": symmetric, "WeightSymmetric": True}
    if method == "percentile":
        extra["CalibPercentile"] = percentile
    with tempfile.TemporaryDirectory() as tmp:
        # Shape inference and graph optimisation first (BatchNorm folded into Conv), as the
        # quantiser expects: otherwise BN would be quantised on its own.
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        excluded = float_nodes(pre, keep_float, fp32.name)
        quantize_static(
            str(pre), str(out), _Batches(calibration, input_name), quant_format=QuantFormat.QDQ,
            per_channel=True, activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
            weight_type=QuantType.QInt8, calibrate_method=_METHODS[method], extra_options=extra,
            nodes_to_exclude=excluded)
    log.info("quantised %s -> %s (%s, %s calibration on %d clips, %d nodes left in float)", fp32.name, out.name,
             flavour, method, len(calibration), len(excluded))
    return out


def float_nodes(model: Path, patterns: Sequence[str], source: str) -> list[str]:
    """Names of the nodes of ``model`` (prepared from ``source``) that any of ``patterns`` matches."""
    return kept_in_float([n.name for n in onnx.load(str(model)).graph.node], patterns, f"no node of {source}")


def kept_in_float(names: Sequence[str], patterns: Sequence[str], where: str) -> list[str]:
    """The ``names`` any of ``patterns`` matches (re.search); a pattern matching none of them is an
    error, so a renamed layer cannot silently turn ``keep_float`` off (also used by QAT)."""
    unmatched = [p for p in patterns if not any(re.search(p, n) for n in names)]
    if unmatched:
        raise ValueError(f"quantise.keep_float: {unmatched} match {where} (names look like {list(names)[:2]})")
    return [n for n in names if any(re.search(p, n) for p in patterns)]
