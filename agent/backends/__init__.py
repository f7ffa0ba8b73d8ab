"""Inference backends (onnxruntime on CPU; TensorRT where it is installed) and the model contract."""
