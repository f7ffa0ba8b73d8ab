"""Where a shipped model runs: one table, read by the choice, the gate and the manifest."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    name: str         # the manifest's ``targets`` key, what the agent's backends read
    label: str        # in the gate's messages
    flavour: str      # the quantisation flavour (``recipe.quantise.<flavour>``, ``compression.quantise``)
    file: str         # its own file in the shipped folder, when it gets a model of its own
    runtime: str
    timed_here: bool  # INT8 must be measured faster on this machine to pay; a target that cannot run
    #                   here (TensorRT) is chosen on accuracy alone
    fallback: str     # precision when INT8 does not pay: the float model, as this runtime runs it


ONNXRUNTIME = Target("onnxruntime", "CPU", "cpu", "model.onnx",
                     "onnxruntime on the CPU: static QDQ, asymmetric uint8 activations", True, "fp32")
TENSORRT = Target("tensorrt", "TensorRT", "tensorrt", "model_trt.onnx",
                  "TensorRT on a Jetson GPU: symmetric int8 QDQ; the engine is built on the device", False, "fp16")
TARGETS = (ONNXRUNTIME, TENSORRT)
