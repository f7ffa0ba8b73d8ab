"""Which models a task's benchmark compares, where each comes from, and the inputs they run on.

Per task: the teacher (FP32), the shipped student in FP32 and in INT8 on onnxruntime's CPU
provider, and, where ``tensorrt`` is importable, the student as a TensorRT FP16 and INT8
engine. Where a model comes from is recorded beside its numbers (``lineage``):

- the shipped artefact ``agent/models/<task>/`` (its manifest says which precision it is);
- the compression run that produced it: a folder under ``runs/`` holding a file with the
  shipped model's exact sha256, or its work folder, whose shipped stage gives those bytes once
  stamped with the feature contract (so its teacher and other stages are that run's, not a
  guess); the pipelines name them ``teacher.onnx``, ``pruned_fp32.onnx`` / ``student_fp32.onnx``,
  ``int8_cpu.onnx`` / ``student_int8.onnx``, ``int8_tensorrt.onnx``;
- a teacher committed under ``compression/teachers/weights/`` whose ``teacher.pt`` has the sha256
  the shipped student's manifest names as its teacher (``teacher.onnx`` beside it is timed), so a
  fresh clone compares student and teacher without a run folder;
- for noise, the committed teacher checkpoint exported to ONNX here (needs torch), and the
  INT8 student rebuilt here with ``compression.quantise`` and the shipped recipe's settings
  when no run folder holds one.

A model that cannot be found is skipped with the reason; nothing is substituted.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "agent" / "models"
NOISE_TEACHER = REPO / "compression" / "teachers" / "weights" / "noise-mn04" / "teacher.pt"
FP32_NAMES = ("pruned_fp32.onnx", "student_fp32.onnx", "student.onnx")
INT8_NAMES = ("int8_cpu.onnx", "student_int8.onnx")
INT8_TRT_NAMES = ("int8_tensorrt.onnx",)
VARIANTS = ("teacher_fp32", "student_fp32", "student_int8", "student_fp16_trt", "student_int8_trt")


class Unavailable(Exception):
    """A model or input that is not here; the message is the skip reason."""


@dataclass
class Variant:
    name: str
    path: Path
    frontend: dict  # the front-end this model was trained on (its contract)
    params: int | None
    lineage: str
    tensorrt: bool = False


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def shipped(task: str) -> tuple[Path, dict, dict]:
    """(folder, manifest, report) of the shipped artefact, or Unavailable."""
    folder = MODELS / task
    if not (folder / "manifest.json").is_file():
        raise Unavailable(f"no shipped {task} model ({folder}/manifest.json)")
    manifest = json.loads((folder / "manifest.json").read_text())
    report = json.loads((folder / "report.json").read_text()) if (folder / "report.json").is_file() else {}
    return folder, manifest, report


@lru_cache(maxsize=None)
def run_folder(task: str) -> Path | None:
    """The runs/ folder of the compression run that produced the shipped model, if kept.

    It holds the shipped bytes (same sha256), or it is the run's work folder: there the shipped
    stage (``report.shipped.cpu``, e.g. ``int8_cpu.onnx``) lies as the chain left it, before it
    stamped the feature contract into the copy it shipped; stamped the same way here, it must give
    the shipped bytes. Several folders can match (repeated runs of one recipe, a copy of the shipped
    folder): the pipeline's default work folder runs/<recipe name> is preferred, then a folder
    with the run's teacher.onnx, then the first in name order.
    """
    folder, manifest, report = shipped(task)
    target = manifest["files"][_target(manifest)]["sha256"]
    stage_file = f"{report.get('shipped', {}).get('cpu', '')}.onnx"
    runs = REPO / "runs"
    candidates = [onnx for onnx in (sorted(runs.glob("**/*.onnx")) if runs.is_dir() else [])
                  if len(onnx.relative_to(runs).parts) <= 3 and onnx.stat().st_size < 200 << 20]
    contract = None
    if any(c.name == stage_file for c in candidates):  # a work folder may be among them
        from compression.export import read_contract

        contract = read_contract(folder / _target(manifest))
    found = [onnx.parent for onnx in candidates
             if sha256(onnx) == target or (onnx.name == stage_file and contract is not None
                                           and _stamped_sha256(onnx, contract) == target)]
    named = runs / str(manifest.get("recipe", {}).get("name") or manifest.get("name"))
    ranked = sorted(dict.fromkeys(found), key=lambda d: (d != named, not (d / "teacher.onnx").is_file()))
    return ranked[0] if ranked else None


def _stamped_sha256(onnx: Path, contract: dict) -> str:
    """sha256 of ``onnx`` once it carries the shipped model's feature contract, as the chain ships it."""
    import tempfile

    from compression.export import stamp_contract

    with tempfile.TemporaryDirectory() as tmp:
        return sha256(stamp_contract(onnx, contract, Path(tmp) / onnx.name))


def _target(manifest: dict) -> str:
    return manifest.get("targets", {}).get("onnxruntime", {}).get("file", "model.onnx")


def onnx_params(path: Path) -> int:
    """Weights in an ONNX file: initializer elements, quantisation scales and zero points left out."""
    import onnx

    model = onnx.load(str(path))
    return int(sum(int(np.prod(t.dims)) for t in model.graph.initializer
                   if not t.name.endswith(("_scale", "_zero_point"))))


def committed_teacher(manifest: dict) -> tuple[Path | None, str | None]:
    """The committed ``teacher.onnx`` whose ``teacher.pt`` is the one the student's manifest names (sha256)."""
    want = manifest.get("inputs", {}).get("teacher_sha256")
    for pt in sorted((REPO / "compression" / "teachers" / "weights").glob("*/teacher.pt")):
        if want and (pt.parent / "teacher.onnx").is_file() and sha256(pt) == want:
            rel = pt.parent.relative_to(REPO)
            return pt.parent / "teacher.onnx", f"{rel}/teacher.onnx (its teacher.pt is the shipped model's teacher: sha256 match)"
    return None, None


def _stage_params(report: dict, stage: str) -> int | None:
    return report.get("stages", {}).get(stage, {}).get("params")


def resolve(task: str, variant: str, tmp: Path, calibration: Callable[[], np.ndarray] | None = None) -> Variant:
    """The model for ``variant`` of ``task``, or Unavailable with the reason."""
    folder, manifest, report = shipped(task)
    frontend = manifest["frontend"]
    precision = manifest.get("targets", {}).get("onnxruntime", {}).get("precision", "fp32")
    model = folder / _target(manifest)
    student_stage = report.get("shipped", {}).get("cpu", "student")
    student_params = _stage_params(report, student_stage)
    run = run_folder(task)
    in_run = lambda names: next((run / n for n in names if run is not None and (run / n).is_file()), None)  # noqa: E731
    from_run = f"runs/{run.relative_to(REPO / 'runs')} (the run that produced the shipped model: sha256 match)" \
        if run is not None else None

    if variant == "teacher_fp32":
        if task == "noise":
            return _noise_teacher(tmp)
        path, lineage = in_run(("teacher.onnx",)), from_run
        if path is None:
            path, lineage = committed_teacher(manifest)
        if path is None:
            raise Unavailable(f"{task} teacher: no runs/ folder of the shipped model's run with teacher.onnx; "
                              f"rebuild it with `roadside compress --recipe compression/recipes/{task}.yaml`")
        return Variant("teacher fp32", path, frontend, _stage_params(report, "teacher") or onnx_params(path), lineage)
    if variant in ("student_fp32", "student_fp16_trt"):
        path, lineage = (model, "shipped") if precision == "fp32" else (in_run(FP32_NAMES), from_run)
        if path is None:
            raise Unavailable(f"{task}: the shipped model is {precision} and no run folder holds its FP32 stage "
                              "(the rebuild that makes one: docs/evaluation.md, Benchmarks)")
        trt = variant == "student_fp16_trt"
        return Variant(f"student {'fp16 (TensorRT)' if trt else 'fp32'}", path, frontend,
                       student_params or onnx_params(path), lineage, tensorrt=trt)
    if variant == "student_int8":
        if precision == "int8":
            return Variant("student int8", model, frontend, student_params or onnx_params(model), "shipped")
        path = in_run(INT8_NAMES)
        if path is not None:
            return Variant("student int8", path, frontend, student_params or onnx_params(path), from_run)
        if calibration is None:
            raise Unavailable(f"{task}: no INT8 student in a run folder and no calibration data to rebuild one")
        q = manifest.get("recipe", {}).get("quantise", {})
        return Variant("student int8", _quantise(model, tmp, calibration(), q), frontend,
                       student_params or onnx_params(model),
                       f"rebuilt here: compression.quantise on the shipped FP32 model "
                       f"({q.get('calibrate_method', 'percentile')}, training-fold calibration)")
    if variant == "student_int8_trt":
        path = folder / "model_trt.onnx" if (folder / "model_trt.onnx").is_file() else in_run(INT8_TRT_NAMES)
        if path is None:
            raise Unavailable(f"{task}: no symmetric INT8 model for TensorRT (model_trt.onnx / int8_tensorrt.onnx)")
        return Variant("student int8 (TensorRT)", path, frontend, student_params or onnx_params(path),
                       "shipped" if path.parent == folder else from_run, tensorrt=True)
    raise ValueError(f"unknown variant {variant!r}")


def noise_teacher_checkpoint() -> Path:
    """The teacher checkpoint the shipped noise student was distilled from (its manifest's recipe names it;
    the committed fold-1 teacher when the manifest does not say)."""
    try:
        ckpt = json.loads((MODELS / "noise" / "manifest.json").read_text())["recipe"]["teacher"]["checkpoint"]
    except (OSError, KeyError, TypeError, ValueError):
        return NOISE_TEACHER
    return (REPO / ckpt) if ckpt else NOISE_TEACHER


def _noise_teacher(tmp: Path) -> Variant:
    import pytest

    torch = pytest.importorskip("torch", reason="the noise teacher is exported from its checkpoint with torch")
    from agent.features.audio import LogMelParams
    from compression.export import export_onnx
    from compression.tasks.noise.teacher import load_checkpoint

    checkpoint = noise_teacher_checkpoint()
    if not checkpoint.is_file():
        raise Unavailable(f"noise teacher: {checkpoint.relative_to(REPO)} (the shipped student's teacher) is missing")
    model, cfg = load_checkpoint(checkpoint)
    p = LogMelParams.from_dict(cfg["frontend"])
    example = torch.zeros(1, 1, p.n_mels, p.frames(int(cfg["window_seconds"] * p.sample_rate)))
    path = export_onnx(model, example, tmp / "noise_teacher.onnx", {"task": "noise"})
    return Variant("teacher fp32", path, cfg["frontend"], sum(t.numel() for t in model.parameters()),
                   f"exported here from {checkpoint.relative_to(REPO)}")


def _quantise(fp32: Path, tmp: Path, calibration: np.ndarray, q: dict[str, Any]) -> Path:
    from compression.quantise import quantise

    out = tmp / f"{fp32.parent.name}_int8_cpu.onnx"
    if not out.is_file():
        quantise(fp32, out, calibration, "cpu", q.get("calibrate_method", "percentile"), q.get("percentile", 99.999))
    return out


def check_input(variant: Variant, features: np.ndarray) -> None:
    """Unavailable unless the model takes the front-end's output (e.g. a teacher trained on other inputs)."""
    import onnxruntime as ort

    dims = ort.InferenceSession(str(variant.path), providers=["CPUExecutionProvider"]).get_inputs()[0].shape[1:]
    if len(dims) != features.ndim or any(isinstance(d, int) and d != f for d, f in zip(dims, features.shape)):
        raise Unavailable(f"{variant.name} ({variant.path.name}) takes {dims}, not its front-end's {features.shape}")


def runner(variant: Variant, tmp: Path) -> Callable[[np.ndarray], np.ndarray]:
    """A callable float32 batch -> first output, on the variant's backend (one intra-op thread)."""
    if variant.tensorrt:
        import pytest

        pytest.importorskip("tensorrt", reason="TensorRT is not installed here (JetPack provides it on a device)")
        from agent.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(variant.path, cache_dir=tmp / "engines", fp16=True)
    from agent.backends.onnx import OnnxBackend

    return OnnxBackend(variant.path, threads=1)
