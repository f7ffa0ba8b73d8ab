"""The shared tail: INT8 per target -> the choice per target -> TensorRT engine -> gate.

A task subclasses ``Tail`` for what differs (how an ONNX file is scored, its gate checks,
what else INT8 must keep to pay, a second try such as quantisation-aware training) and calls
``finish``. The rules are the same for every task:

- each target in ``Tail.targets`` gets a post-training INT8 model of its flavour, calibrated on
  the task's recorded calibration inputs and scored like every stage;
- a target that runs here (onnxruntime) takes INT8 only when it is measured faster than FP32 and
  the task accepts it; TensorRT, which cannot be timed here, on the task's acceptance alone;
- a target without an INT8 model of its own gets the CPU model (TensorRT: an FP16 engine);
- the gate checks every model that ships, for every target, and the export's parity.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compression.chain import lineage
from compression.chain.gate import params_within_budget
from compression.chain.stages import Stages
from compression.chain.targets import ONNXRUNTIME, TARGETS, Target
from compression.manifest import sha256_bytes, sha256_file

log = logging.getLogger(__name__)
HEADLINE = ("accuracy", "macro_f1", "agreement", "top1_agreement_with_fp32", "state_agreement_with_fp32")


@dataclass
class Choice:
    """What one target gets: the stage, its file (None: the CPU model's), its precision and why."""
    stage: str
    path: Path | None
    precision: str
    why: str


@dataclass
class Outcome:
    choices: dict[str, Choice]
    failures: list[str]
    engine: dict
    rejected: dict[str, list[str]] = field(default_factory=dict)  # target -> INT8 candidates turned down, why

    @property
    def shipped(self) -> dict[str, str]:
        return {t: c.stage for t, c in self.choices.items()}


class Tail:
    """One task's side of the shared tail. ``stages`` must hold "teacher" and ``fp32_stage`` already."""

    fp32_stage = "pruned"
    targets: tuple[Target, ...] = TARGETS  # the targets that get an INT8 model of their own

    def __init__(self, recipe, stages: Stages, contract: dict, work: Path, calibration: np.ndarray):
        self.recipe, self.stages, self.contract, self.work = recipe, stages, contract, work
        self.calibration = calibration

    # --- what a task says ---------------------------------------------------------------------
    def int8_stage(self, target: Target) -> str:
        return f"int8_{target.flavour}"

    def onnx_scorer(self, path: Path):
        """An ONNX stage as a Scorer, described by the chain's contract (an INT8 file loses its metadata)."""
        from agent.backends.onnx import OnnxBackend
        from compression.evaluate import Scorer

        c = self.contract
        return Scorer(c["task"], c["labels"], c["frontend"], c["window_seconds"], OnnxBackend(path, threads=1),
                      sha256_file(path), "onnx")

    def check(self, teacher: dict, shipped: dict) -> list[str]:
        """The gate's reasons against one shipped stage (empty when it passes)."""
        return params_within_budget(self.recipe, shipped)

    def parity_failures(self, parity: dict) -> list[str]:
        return []

    def accept(self, target: Target, stage: str, path: Path) -> tuple[bool, str]:
        """Whether the INT8 ``stage`` keeps enough to ship for ``target`` (never judged on the gate's data
        unless the task has no other), and a sentence saying why."""
        return True, "kept"

    def retry(self, target: Target) -> tuple[str, Path] | None:
        """A second INT8 candidate when the first is not accepted (stage name, file), or None."""
        return None

    def speeds(self, fp32: Path, int8_stage: str, int8: Path) -> tuple[float, float, str]:
        """(FP32 ms, INT8 ms, unit) of the model alone on this CPU."""
        lat = self.stages.results
        return lat[self.fp32_stage]["latency"]["model_ms"], lat[int8_stage]["latency"]["model_ms"], self.stages.unit

    # --- the shared steps ----------------------------------------------------------------------
    def score_int8(self, name: str, path: Path) -> dict:
        fp32 = self.stages.results[self.fp32_stage]
        entry = self.stages.score(name, self.onnx_scorer(path), path, fp32["params"], fp32["_macs"])
        entry["top1_agreement_with_fp32"] = self.stages.agreement(name, self.fp32_stage)
        return entry

    def quantise(self, target: Target, fp32: Path) -> Path:
        """Post-training INT8 of ``target``'s flavour (reused when its lineage record matches), scored like
        every stage; the record keeps the stage's headline metrics."""
        from compression.quantise import quantise

        q = self.recipe.quantise
        percentile, keep_float = q.flavour(target.flavour)
        name = self.int8_stage(target)
        path = self.work / f"{name}.onnx"
        config = {"flavour": target.flavour, "calibrate_method": q.calibrate_method, "percentile": percentile,
                  "keep_float": keep_float}
        inputs = {"fp32": sha256_file(fp32), "calibration": sha256_bytes(np.ascontiguousarray(self.calibration))}
        t_start = time.time()
        if not lineage.reusable(path, "quantise", config, inputs):
            quantise(fp32, path, self.calibration, target.flavour, q.calibrate_method, percentile,
                     keep_float=keep_float)
        entry = self.score_int8(name, path)
        lineage.write(path, "quantise", config, inputs, {k: entry.get(k) for k in HEADLINE}, time.time() - t_start)
        return path


def finish(tail: Tail, fp32: Path, parity: dict) -> Outcome:
    """INT8 per target, the choice per target, the TensorRT engine, the gate."""
    choices, rejected = choose(tail, fp32)
    trt = choices.get("tensorrt")
    engine = build_engine(tail.recipe, (trt.path if trt and trt.path else None)
                          or choices[ONNXRUNTIME.name].path, tail.work)
    return Outcome(choices, gate(tail, choices, parity), engine, rejected)


def choose(tail: Tail, fp32: Path) -> tuple[dict[str, Choice], dict[str, list[str]]]:
    """Each target's model, and the INT8 candidates each turned down (with why)."""
    if not tail.recipe.quantise.enabled:
        return {t.name: Choice(tail.fp32_stage, fp32 if t is ONNXRUNTIME else None, t.fallback,
                               f"{t.fallback.upper()}: quantise.enabled is false") for t in TARGETS}, {}
    paths = {t.name: tail.quantise(t, fp32) for t in tail.targets}
    rejected: dict[str, list[str]] = {t.name: [] for t in tail.targets}
    choices = {t.name: _choose(tail, t, fp32, paths[t.name], rejected[t.name]) for t in tail.targets}
    cpu = choices[ONNXRUNTIME.name]
    for t in TARGETS:
        if t.name not in choices:
            precision = "int8" if cpu.precision == "int8" else t.fallback
            choices[t.name] = Choice(cpu.stage, None, precision, f"{precision.upper()} from the CPU model "
                                                                 f"({t.file} is not built for this task)")
    return choices, rejected


def _choose(tail: Tail, target: Target, fp32: Path, path: Path, rejected: list[str]) -> Choice:
    name = tail.int8_stage(target)
    fall = "FP32" if target.fallback == "fp32" else "FP16 engine from the FP32 model"
    fallback = Choice(tail.fp32_stage, fp32 if target is ONNXRUNTIME else None, target.fallback, "")
    note = ""
    if target.timed_here:
        f, q, unit = tail.speeds(fp32, name, path)
        if q >= f:
            log.info("INT8 is not faster than FP32 on this CPU: %s gets FP32", target.name)
            fallback.why = f"{fall}: INT8 is not faster on this CPU (INT8 {q:.3f} ms, FP32 {f:.3f} ms {unit}, model only)"
            return fallback
        note = f"{f / q:.2f}x faster than FP32 on this CPU (model only), "
    for k in range(2):  # the post-training model, then the task's second try (if it has one)
        ok, why = tail.accept(target, name, path)
        if ok:
            return Choice(name, path, "int8", f"INT8 ({name}): {note}{why}")
        rejected.append(f"{name}: {why}")
        again = tail.retry(target) if k == 0 else None
        if again is None:
            break
        log.warning("%s does not pay for %s (%s): trying %s", name, target.name, why, again[0])
        name, path = again
    log.warning("INT8 does not pay for %s (%s): it gets %s", target.name, "; ".join(rejected), fall)
    fallback.why = f"{fall}: " + "; ".join(rejected)
    return fallback


def gate(tail: Tail, choices: dict[str, Choice], parity: dict) -> list[str]:
    """Reasons to refuse the run: every model that ships (deduplicated) against the teacher and the
    budget, and the ONNX export's parity with PyTorch."""
    results = tail.stages.results
    shipped = dict.fromkeys((t.label, choices[t.name].stage) for t in TARGETS)
    failures = [f"{label} model ({name}): {reason}" for label, name in shipped
                for reason in tail.check(results["teacher"], results[name])]
    return failures + tail.parity_failures(parity)


def build_engine(recipe, onnx_path: Path, work: Path) -> dict:
    """The TensorRT engine, where TensorRT exists (a Jetson or a GPU box); skipped, and said so, elsewhere."""
    engine = recipe.engine
    if not engine.enabled:
        return {"status": "disabled"}
    from agent.backends import BackendUnavailable
    from agent.backends.tensorrt import build_engine as trt_build

    try:
        path = trt_build(onnx_path, work / "engines", fp16=engine.fp16, dla_core=engine.dla_core,
                         workspace_mb=engine.workspace_mb)
    except BackendUnavailable as e:
        return {"status": f"skipped: {e}"}
    return {"status": "built", "engine": path.name, "bytes": path.stat().st_size}
