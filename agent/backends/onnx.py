"""onnxruntime backend: the CPU path (and the fallback wherever TensorRT is missing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort


class OnnxBackend:
    def __init__(self, model_path: Path | str, threads: int = 1):
        opts = ort.SessionOptions()
        # One intra-op thread by default: a roadside box runs several tasks side by side.
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """First output (the logits) for a float32 batch."""
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]
