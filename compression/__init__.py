"""roadside compression pipeline: teacher -> student -> prune -> INT8 -> ONNX -> TensorRT.

Imports torch; the device never imports this package.
"""
