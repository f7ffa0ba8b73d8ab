"""TensorRT backend: build an engine from the shipped QDQ ONNX on first start, cache it, run it.

An engine only runs on the TensorRT version and GPU architecture it was built for, so
it is named and checked by (ONNX sha256, TensorRT version, compute capability). A
cached engine whose sidecar says otherwise is refused and rebuilt, never loaded.

``tensorrt`` (JetPack) and ``cuda-python`` are optional imports: where either is
missing, constructing the backend raises ``BackendUnavailable`` and the agent falls
back to onnxruntime, logging why. The key/sidecar logic below needs neither.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..hashing import sha256_file
from . import BackendUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineKey:
    onnx_sha256: str
    trt_version: str
    compute_capability: str  # "8.7" for Orin, "7.2" for Xavier
    precision: str           # "int8+fp16", "int8", "fp16", "fp32"
    dla_core: int | None = None

    @property
    def filename(self) -> str:
        dla = f"_dla{self.dla_core}" if self.dla_core is not None else ""
        return (f"{self.onnx_sha256[:16]}_trt{self.trt_version}_sm{self.compute_capability.replace('.', '')}"
                f"_{self.precision.replace('+', '-')}{dla}.engine")


class EngineMismatch(RuntimeError):
    """A cached engine built for another model, TensorRT version or GPU."""


def check_sidecar(engine_path: Path, expected: EngineKey) -> None:
    """Refuse an engine whose recorded key differs from this device's, or whose bytes changed."""
    sidecar = engine_path.with_suffix(".json")
    if not sidecar.is_file():
        raise EngineMismatch(f"{engine_path}: no {sidecar.name} beside it; its origin is unknown")
    recorded = json.loads(sidecar.read_text())
    diffs = {k: (recorded.get(k), v) for k, v in asdict(expected).items() if recorded.get(k) != v}
    if diffs:
        detail = ", ".join(f"{k}: engine {a!r} vs here {b!r}" for k, (a, b) in diffs.items())
        raise EngineMismatch(f"{engine_path}: built for another target ({detail})")
    digest = sha256_file(engine_path)
    if digest != recorded.get("engine_sha256"):
        raise EngineMismatch(f"{engine_path}: engine bytes do not match their sidecar (damaged)")


def write_sidecar(engine_path: Path, key: EngineKey) -> None:
    info = {**asdict(key), "engine_sha256": sha256_file(engine_path)}
    engine_path.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")


def _imports():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendUnavailable(f"tensorrt is not installed ({e})") from None
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as e:
            raise BackendUnavailable(f"cuda-python is not installed ({e})") from None
    return trt, cudart


def _check(result):
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else rest


def compute_capability() -> str:
    _, cudart = _imports()
    props = _check(cudart.cudaGetDeviceProperties(0))
    return f"{props.major}.{props.minor}"


def build_engine(onnx_path: Path, cache_dir: Path, *, int8: bool = True, fp16: bool = True,
                 dla_core: int | None = None, workspace_mb: int = 1024, max_batch: int = 8) -> Path:
    """The engine for ``onnx_path`` on this device: from the cache when it matches, else built now."""
    trt, _ = _imports()
    onnx_bytes = Path(onnx_path).read_bytes()
    # INT8 only for explicitly quantised (QDQ) models: an FP32 model would need implicit
    # calibration, which TensorRT 10 deprecates. The op name is stored as plain text in the protobuf.
    int8 = int8 and b"QuantizeLinear" in onnx_bytes
    precision = "+".join(p for p, on in (("int8", int8), ("fp16", fp16)) if on) or "fp32"
    key = EngineKey(hashlib.sha256(onnx_bytes).hexdigest(), trt.__version__, compute_capability(), precision,
                    dla_core)
    cache_dir.mkdir(parents=True, exist_ok=True)
    engine_path = cache_dir / key.filename
    if engine_path.is_file():
        try:
            check_sidecar(engine_path, key)
            return engine_path
        except EngineMismatch as e:
            log.warning("rebuilding: %s", e)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch (the only mode in TensorRT 10)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantisation: scales come from the QDQ nodes
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)  # layers left in float may run in FP16
    if dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    inp = network.get_input(0)
    profile = builder.create_optimization_profile()
    shape = tuple(inp.shape)[1:]
    profile.set_shape(inp.name, (1, *shape), (1, *shape), (max_batch, *shape))
    config.add_optimization_profile(profile)
    timing_path = cache_dir / f"timing_trt{trt.__version__}_sm{key.compute_capability.replace('.', '')}.cache"
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)

    log.info("building TensorRT engine %s (first start; takes minutes on a Jetson)", engine_path.name)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine for {onnx_path}")
    tmp = engine_path.with_suffix(".tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(engine_path)  # atomic: a power cut never leaves half an engine under the real name
    write_sidecar(engine_path, key)
    timing_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return engine_path


class TensorRTBackend:
    """Callable like OnnxBackend: float32 features (B, ...) -> logits (B, C)."""

    def __init__(self, model_path: Path, cache_dir: Path, fp16: bool = True, dla_core: int | None = None):
        trt, cudart = _imports()
        self._trt, self._cudart = trt, cudart
        engine_path = build_engine(Path(model_path), Path(cache_dir), fp16=fp16, dla_core=dla_core)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise BackendUnavailable(f"TensorRT could not load {engine_path}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.stream = _check(cudart.cudaStreamCreate())
        self.engine_path = engine_path

    def __call__(self, x: np.ndarray) -> np.ndarray:
        cudart = self._cudart
        x = np.ascontiguousarray(x, dtype=np.float32)
        self.context.set_input_shape(self.input_name, x.shape)
        out = np.empty(tuple(self.context.get_tensor_shape(self.output_name)), dtype=np.float32)
        d_in = _check(cudart.cudaMalloc(x.nbytes))
        d_out = _check(cudart.cudaMalloc(out.nbytes))
        try:
            h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
            _check(cudart.cudaMemcpyAsync(d_in, x.ctypes.data, x.nbytes, h2d, self.stream))
            self.context.set_tensor_address(self.input_name, int(d_in))
            self.context.set_tensor_address(self.output_name, int(d_out))
            if not self.context.execute_async_v3(self.stream):
                raise RuntimeError("TensorRT inference failed")
            _check(cudart.cudaMemcpyAsync(out.ctypes.data, d_out, out.nbytes, d2h, self.stream))
            _check(cudart.cudaStreamSynchronize(self.stream))
        finally:
            cudart.cudaFree(d_in)
            cudart.cudaFree(d_out)
        return out
