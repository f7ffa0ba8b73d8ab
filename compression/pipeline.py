"""``roadside compress``: teacher -> student (distil) -> pruned -> INT8 -> ONNX (+ TensorRT), gated.

Every stage is scored by the same evaluation code (``compression.evaluate``) on the
same held-out clips; every stage's numbers reach the report even when the gate fails.
Writes to ``out`` (the shipped folder): model.onnx (the CPU artefact: INT8 where it is
faster, else FP32), model_trt.onnx (symmetric INT8 QDQ for TensorRT), manifest.json,
report.json, confusion.png, accuracy_latency.png. Intermediate checkpoints go to ``work``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from agent.features.audio import LogMelParams, log_mel

from . import gate, prune
from .datasets import urbansound
from .distil import Distiller
from .evaluate import Scorer, evaluate_noise, torch_scorer
from .export import export_onnx
from .latency import per_second_of_audio
from .manifest import sha256_file, write_manifest
from .recipe import CompressionRecipe, load_recipe
from .report import plot_accuracy_latency, plot_confusion, ship_models, write_json
from .students import BUILDERS
from .teachers import noise as noise_teacher
from .teachers.noise import load_checkpoint

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
SOURCE_RATE = 16000  # the clips' and the microphones' rate


class Stages:
    """Collects each stage's measured numbers, in order."""

    def __init__(self, val_clips: list, root: Path, labels: list[str], window_seconds: float, wave: np.ndarray):
        self.val_clips, self.root, self.labels = val_clips, root, labels
        self.window_seconds, self.wave = window_seconds, wave  # one real window for latency
        self.results: dict[str, dict] = {}

    def score(self, name: str, scorer: Scorer, onnx_path: Path | None, params: int, macs: int) -> dict:
        metrics = evaluate_noise(scorer, self.root, clips=self.val_clips)
        entry = {k: metrics[k] for k in ("n", "accuracy", "macro_f1", "per_class", "confusion", "top3_accuracy")}
        entry.update(params=params, macs_per_second=macs / self.window_seconds, frontend=scorer.frontend)
        if onnx_path is not None:
            entry["latency"] = per_second_of_audio(onnx_path, scorer.frontend, self.wave, SOURCE_RATE)
            entry["onnx_bytes"] = onnx_path.stat().st_size
            entry["int8_weight_bytes"] = int8_weight_bytes(onnx_path)
        entry["_logits"] = metrics["logits"]
        self.results[name] = entry
        log.info("%s: accuracy %.4f, macro-F1 %.4f, %d params, %.2f M MACs/s%s", name, entry["accuracy"],
                 entry["macro_f1"], params, entry["macs_per_second"] / 1e6,
                 f", {entry['latency']['total_ms']:.3f} ms per s of audio" if onnx_path else "")
        return entry

    def agreement(self, a: str, b: str) -> float:
        """Share of clips on which stages ``a`` and ``b`` give the same top-1 class."""
        return float((self.results[a]["_logits"].argmax(1) == self.results[b]["_logits"].argmax(1)).mean())


def int8_weight_bytes(path: Path) -> int:
    model = onnx.load(str(path))
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer
               if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) and len(t.dims) > 1)


def _features(waves: np.ndarray, frontend: dict) -> np.ndarray:
    from agent.features.resample import resample

    p = LogMelParams.from_dict(frontend)
    x = waves if p.sample_rate == SOURCE_RATE else resample(waves, SOURCE_RATE, p.sample_rate)
    return log_mel(x, p)[:, None]


def _example(frontend: dict, window: float) -> torch.Tensor:
    """A zero input of the shape the front-end gives for one window: (1, 1, n_mels, frames)."""
    p = LogMelParams.from_dict(frontend)
    return torch.zeros(1, 1, p.n_mels, p.frames(int(round(window * p.sample_rate))))


def _splits(recipe: CompressionRecipe, data) -> tuple[Path, list, list]:
    root = urbansound.find_root(data)
    clips = urbansound.list_clips(root)
    train = [c for c in clips if c.fold != recipe.data.val_fold]
    val = [c for c in clips if c.fold == recipe.data.val_fold]
    if not val or not train:
        raise ValueError(f"data.val_fold {recipe.data.val_fold!r}: need it and at least one other fold in {root}")
    if recipe.data.max_clips:
        rng = np.random.default_rng(recipe.seed)  # a stratified-enough sample for smoke runs
        train = [train[i] for i in sorted(rng.permutation(len(train))[:recipe.data.max_clips])]
        val = [val[i] for i in sorted(rng.permutation(len(val))[:recipe.data.max_clips])]
    return root, train, val


def _training_folds(train: list, teacher_path: Path | None) -> list[str]:
    """Folds whose clips the student or its teacher learnt from: ``roadside eval`` leaves them out.
    (A teacher from elsewhere, e.g. Hugging Face, adds what its own folder records: nothing here.)"""
    teacher = noise_teacher.training_folds(teacher_path) if teacher_path is not None else None
    return sorted({c.fold for c in train} | set(teacher or []))


# task -> "module:function(recipe, recipe_path, data, out, work) -> report" of its chain
CHAINS: dict[str, str] = {"noise": "compression.pipeline:run_noise",
                          "vehicles": "compression.chains.vehicles:run_vehicles",
                          "congestion": "compression.chains.congestion:run_congestion"}


def run(recipe_path: Path, data=None, out: Path | None = None, work: Path | None = None, **overrides) -> dict:
    """``roadside compress``: the recipe's chain for its task. Raises GateFailed when the result must not ship."""
    import importlib

    recipe = load_recipe(recipe_path, **overrides)
    module, name = CHAINS[recipe.task].split(":")
    return getattr(importlib.import_module(module), name)(recipe, recipe_path, data, out, work)


def run_noise(recipe: CompressionRecipe, recipe_path: Path, data=None, out: Path | None = None,
              work: Path | None = None) -> dict:
    """The recipe's teacher (a checkpoint or a Hugging Face model folder) through the noise chain."""
    if recipe.teacher.huggingface is not None:
        return _run_huggingface(recipe, recipe_path, data, out, work)
    teacher_path = Path(recipe.teacher.checkpoint)
    teacher_path = teacher_path if teacher_path.is_absolute() else REPO / teacher_path
    teacher, tcfg = load_checkpoint(teacher_path)
    return compress(teacher, tcfg["frontend"], list(tcfg["labels"]), recipe, data, out, work,
                    recipe_path=recipe_path, teacher_path=teacher_path)


def _run_huggingface(recipe: CompressionRecipe, recipe_path: Path, data=None, out: Path | None = None,
                     work: Path | None = None) -> dict:
    """A Hugging Face model folder as the teacher: its extractor as our log-mel, its outputs in the
    data's label order; how faithfully our front-end feeds it is measured against optimum's export."""
    from .teachers import huggingface

    path = Path(recipe.teacher.huggingface)
    path = path if path.is_absolute() else REPO / path
    teacher = huggingface.load_teacher(path, list(urbansound.LABELS))
    work = Path(work or REPO / "runs" / recipe.name)
    root, _, val = _splits(recipe, data)
    p = LogMelParams.from_dict(teacher.frontend)
    waves, _, _ = urbansound.load_clips(val[:32], p.sample_rate, recipe.student.window_seconds, progress=False)
    check = huggingface.fidelity(teacher, huggingface.export_optimum(path, work / "teacher_optimum"), waves)
    log.info("Hugging Face teacher through our front-end vs its own extractor + optimum ONNX: %s", check)
    return compress(teacher.module, teacher.frontend, teacher.labels, recipe, data, out, work,
                    recipe_path=recipe_path, teacher_inputs=teacher.identity(),
                    report_extra={"teacher_frontend_fidelity": check})


def compress(teacher: torch.nn.Module, teacher_frontend: dict, labels: list[str], recipe: CompressionRecipe,
             data=None, out: Path | None = None, work: Path | None = None, *,
             recipe_path: Path | None = None, teacher_path: Path | None = None,
             teacher_inputs: dict | None = None, report_extra: dict | None = None) -> dict:
    """Compress any PyTorch teacher: ``teacher(x)`` maps log-mel (B, 1, n_mels, T) from
    ``teacher_frontend`` (a LogMelParams dict) to logits over ``labels`` (or a tuple whose
    first item is the logits). ``teacher_inputs`` names the teacher in the manifest when it is
    not one file (default: ``teacher_path``'s sha256, else a hash of its weights);
    ``report_extra`` is added to the report. Returns the report; raises GateFailed when the
    result must not ship.
    """
    t_start = time.time()
    torch.manual_seed(recipe.seed)
    torch.set_num_threads(recipe.threads)
    teacher = teacher.eval()
    tcfg = {"frontend": LogMelParams.from_dict(teacher_frontend).to_dict(), "labels": labels}
    out = Path(out or REPO / "agent" / "models" / recipe.task)
    work = Path(work or REPO / "runs" / recipe.name)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    window = recipe.student.window_seconds
    sfe = recipe.student.frontend
    root, train, val = _splits(recipe, data)
    waves, train, _ = urbansound.load_clips(train, SOURCE_RATE, window)
    y = np.array([c.label for c in train])
    stages = Stages(val, root, labels, window, waves[0])
    t_example, s_example = _example(tcfg["frontend"], window), _example(sfe, window)

    # 1. teacher: the reference every stage is measured against
    teacher_onnx = export_onnx(teacher, t_example, work / "teacher.onnx", {"task": recipe.task})
    macs, params = prune.count(teacher, t_example)
    stages.score("teacher", torch_scorer(teacher, recipe.task, labels, tcfg["frontend"], window),
                 teacher_onnx, params, macs)

    # 2. student, distilled on the same views the teacher sees
    student = BUILDERS[recipe.student.type](teacher, len(labels), s_example.shape[2], recipe.student)
    distiller = Distiller(teacher, LogMelParams.from_dict(tcfg["frontend"]), LogMelParams.from_dict(sfe),
                          waves, y, len(labels), SOURCE_RATE, recipe.distil, recipe.seed)
    history = distiller.run(student, recipe.distil.epochs, recipe.distil.lr, "distil")
    torch.save(student.state_dict(), work / "student.pt")
    student_onnx = export_onnx(student, s_example, work / "student.onnx", {"task": recipe.task})
    macs, params = prune.count(student, s_example)
    stages.score("student", torch_scorer(student, recipe.task, labels, sfe, window), student_onnx, params, macs)

    # 3. structured pruning, each step followed by KD fine-tuning
    calib_clips = [train[i] for i in sorted(np.random.default_rng(recipe.seed).permutation(len(train))
                                            [:recipe.data.calibration_clips])]
    calib = _features(waves[[train.index(c) for c in calib_clips]], sfe)
    prune_log = []
    if recipe.prune.enabled:
        prune_log, runs = prune_stage(student, recipe, s_example, calib, distiller, params)
        history += runs
        torch.save(student, work / "pruned.pt")
    fp32_onnx = export_onnx(student, s_example, work / "pruned_fp32.onnx", {"task": recipe.task})
    macs, params = prune.count(student, s_example)
    stages.score("pruned", torch_scorer(student, recipe.task, labels, sfe, window), fp32_onnx, params, macs)
    parity = onnx_parity(student, fp32_onnx, val[:16], sfe, window)

    # 4. INT8, two flavours, calibrated on a recorded list of training clips
    contract = {"task": recipe.task, "labels": labels, "frontend": sfe, "window_seconds": window,
                "name": recipe.name, "version": recipe.version}
    chosen = {"cpu": fp32_onnx, "tensorrt": None}
    if recipe.quantise.enabled:
        from .quantise import quantise

        for flavour in ("cpu", "tensorrt"):
            percentile, keep_float = recipe.quantise.flavour(flavour)
            path = quantise(fp32_onnx, work / f"int8_{flavour}.onnx", calib, flavour,
                            recipe.quantise.calibrate_method, percentile, keep_float=keep_float)
            scorer = _onnx_scorer(path, contract)
            entry = stages.score(f"int8_{flavour}", scorer, path, params, macs)
            entry["top1_agreement_with_fp32"] = stages.agreement(f"int8_{flavour}", "pruned")
            chosen[flavour] = path
        # INT8 only where it pays, per target: on the CPU when measured faster; for TensorRT when
        # it keeps the accuracy (else TensorRT builds an FP16 engine from the FP32 model)
        cpu_int8, fp32 = stages.results["int8_cpu"], stages.results["pruned"]
        if cpu_int8["latency"]["model_ms"] >= fp32["latency"]["model_ms"]:
            log.info("INT8 is not faster than FP32 on this CPU: shipping FP32 for onnxruntime")
            chosen["cpu"] = fp32_onnx
        trt_reasons = gate.check(recipe, stages.results["teacher"], stages.results["int8_tensorrt"])
        # QAT can win back accuracy, not parameters or MACs: it runs only when accuracy is what failed
        lost = 100 * (stages.results["teacher"]["accuracy"] - stages.results["int8_tensorrt"]["accuracy"])
        if lost > recipe.gate.max_drop and recipe.quantise.qat_epochs:
            log.warning("post-training INT8 for TensorRT fails the gate (%s): quantisation-aware training",
                        "; ".join(trt_reasons))
            chosen["tensorrt_rejected"] = [f"int8_tensorrt: {r}" for r in trt_reasons]
            path, history_qat = qat_stage(student, recipe, s_example, calib, distiller, work, contract)
            history += history_qat
            entry = stages.score("int8_tensorrt_qat", _onnx_scorer(path, contract), path, params, macs)
            entry["top1_agreement_with_fp32"] = stages.agreement("int8_tensorrt_qat", "pruned")
            chosen["tensorrt"], chosen["tensorrt_stage"] = path, "int8_tensorrt_qat"
            trt_reasons = gate.check(recipe, stages.results["teacher"], entry)
            if trt_reasons:
                chosen["tensorrt_rejected"] += [f"int8_tensorrt_qat: {r}" for r in trt_reasons]
        else:
            chosen["tensorrt_rejected"] = trt_reasons
        if trt_reasons:
            log.warning("INT8 for TensorRT fails the gate (%s): TensorRT gets the FP32 model (FP16 engine)",
                        "; ".join(trt_reasons))
            chosen["tensorrt"] = None

    # 5. TensorRT engine, where TensorRT exists
    engine = build_engine_stage(recipe, chosen["tensorrt"] or chosen["cpu"], work)

    # 6. the gate, on everything that ships: the CPU model and the INT8 model for TensorRT
    shipped_name = {fp32_onnx: "pruned"}.get(chosen["cpu"], "int8_cpu")
    trt_name = chosen.get("tensorrt_stage", "int8_tensorrt") if chosen["tensorrt"] is not None else shipped_name
    failures = [f"{target} model ({name}): {reason}"
                for target, name in dict.fromkeys((("CPU", shipped_name), ("TensorRT", trt_name)))
                for reason in gate.check(recipe, stages.results["teacher"], stages.results[name])]
    failures += gate.check_parity(recipe, parity)

    chosen["tensorrt_name"] = trt_name
    report = write_artefacts(recipe, recipe_path, out, stages, chosen, shipped_name, contract, failures,
                             engine, parity, prune_log, history, train, val, calib_clips, root, teacher,
                             teacher_path, time.time() - t_start, distiller.teacher_calls,
                             teacher_inputs, report_extra or {})
    if failures:
        raise gate.GateFailed("the compressed model did not pass the gate:\n  " + "\n  ".join(failures))
    return report


def prune_stage(student, recipe: CompressionRecipe, example: torch.Tensor, calib: np.ndarray,
                distiller: Distiller, params: int) -> tuple[list[dict], list[dict]]:
    """Prune in ``prune.steps`` steps (to the plan, or to ``prune.target_params``), KD fine-tuning after each."""
    from .students.slim import SlimTeacher

    cfg, log_steps, history = recipe.prune, [], []
    if cfg.method == "reconstruct" and not isinstance(student, SlimTeacher):
        raise ValueError(f"prune.method reconstruct re-fits a whole slimmed teacher; this student is a "
                         f"{type(student).__name__}: use prune.method magnitude")
    x = torch.from_numpy(calib)
    planned = cfg.method == "reconstruct" and cfg.plan is not None
    targets = [0] * cfg.steps if planned else prune.step_targets(params, cfg.target_params, cfg.steps)
    widths = None
    for k, target in enumerate(targets):
        before = prune.count(student, example)
        if cfg.method == "reconstruct":
            from . import reconstruct

            if planned:
                widths = widths or reconstruct.widths(student)
                keep = reconstruct.apply_plan(student, x, widths, cfg.plan, (k + 1) / cfg.steps)
            else:
                keep = reconstruct.plan_keep(student, example, target)
                reconstruct.reconstruct(student, x, keep)
            macs, n = prune.count(student, example)
            info = {"method": "reconstruct", "keep": keep, "macs_before": before[0], "params_before": before[1],
                    "macs": macs, "params": n}
        else:
            info = {"method": "magnitude", **prune.prune_step(student, example, target, cfg.round_to,
                                                               cfg.max_layer_ratio, student.pruning_protected())}
        last = k == len(targets) - 1
        epochs = cfg.final_epochs if last and cfg.final_epochs is not None else cfg.epochs_per_step
        history += distiller.run(student, epochs, cfg.lr, f"prune{k + 1}")
        log_steps.append(info)
    return log_steps, history


def qat_stage(student, recipe: CompressionRecipe, example: torch.Tensor, calib: np.ndarray, distiller: Distiller,
              work: Path, contract: dict) -> tuple[Path, list[dict]]:
    """A fake-quantised copy of the student, KD fine-tuned, exported with Q/DQ pairs for TensorRT."""
    import copy

    from . import qat

    qstudent = copy.deepcopy(student)
    percentile, keep_float = recipe.quantise.flavour("tensorrt")
    n = qat.prepare(qstudent, calib, percentile, keep_float)
    log.info("quantisation-aware training: %d layers fake-quantised, %d epochs", n, recipe.quantise.qat_epochs)
    history = distiller.run(qstudent, recipe.quantise.qat_epochs, recipe.quantise.qat_lr, "qat")
    qat.freeze(qstudent)
    path = export_onnx(qstudent, example, work / "int8_tensorrt_qat.onnx", contract)
    return path, history


def _onnx_scorer(path: Path, contract: dict) -> Scorer:
    from agent.backends.onnx import OnnxBackend

    return Scorer(contract["task"], contract["labels"], contract["frontend"], contract["window_seconds"],
                  OnnxBackend(path, threads=1), sha256_file(path), "onnx")


def onnx_parity(model: torch.nn.Module, onnx_path: Path, clips: list, frontend: dict, window: float) -> dict:
    """Max |logit| difference between PyTorch FP32 and its ONNX export, on real clips."""
    from agent.backends.onnx import OnnxBackend

    waves, _, _ = urbansound.load_clips(clips, SOURCE_RATE, window, progress=False)
    x = _features(waves, frontend)
    with torch.inference_mode():
        ref = model.eval()(torch.from_numpy(x))[0].numpy()
    got = OnnxBackend(onnx_path, threads=1)(x)
    diff, scale = float(np.abs(ref - got).max()), float(np.abs(ref).max())
    # float32 rounding grows with the logits' size: the relative figure tells a broken export
    # (O(1)) from rounding (~1e-6) whatever the model's scale
    return {"clips": len(clips), "max_abs_logit_diff": diff, "max_abs_logit": scale,
            "relative": diff / max(scale, 1e-12)}


def build_engine_stage(recipe: CompressionRecipe, trt_onnx: Path, work: Path) -> dict:
    if not recipe.engine.enabled:
        return {"status": "disabled"}
    from agent.backends import BackendUnavailable
    from agent.backends.tensorrt import build_engine

    try:
        path = build_engine(trt_onnx, work / "engines", fp16=recipe.engine.fp16, dla_core=recipe.engine.dla_core,
                            workspace_mb=recipe.engine.workspace_mb)
    except BackendUnavailable as e:
        return {"status": f"skipped: {e}"}
    return {"status": "built", "engine": path.name, "bytes": path.stat().st_size}


def _inputs(teacher: torch.nn.Module, teacher_path: Path | None, recipe_path: Path | None,
            teacher_inputs: dict | None = None) -> dict:
    """The teacher's identity: as given, its file's sha256, or for an in-memory teacher a hash of its weights."""
    if teacher_inputs is not None:
        ident = teacher_inputs
    elif teacher_path is not None:
        ident = {"teacher": teacher_path.name, "teacher_sha256": sha256_file(teacher_path)}
    else:
        import hashlib

        h = hashlib.sha256()
        for name, t in sorted(teacher.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().numpy().tobytes())
        ident = {"teacher": type(teacher).__name__, "teacher_state_sha256": h.hexdigest()}
    return {**ident, "recipe_file": Path(recipe_path).name if recipe_path else None}


def write_artefacts(recipe, recipe_path, out, stages, chosen, shipped_name, contract, failures, engine, parity,
                    prune_log, history, train, val, calib_clips, root, teacher, teacher_path, seconds,
                    teacher_calls, teacher_inputs, report_extra) -> dict:
    results = {k: {kk: vv for kk, vv in v.items() if kk != "_logits"} for k, v in stages.results.items()}
    shipped = results[shipped_name]
    files, targets = ship_models(out, chosen["cpu"], chosen["tensorrt"],
                                 "int8" if shipped_name.startswith("int8") else "fp32", contract)
    model_path = files[0]
    report = {
        "task": recipe.task, "name": recipe.name, "version": recipe.version,
        "gate": {"passed": not failures, "failures": failures, "max_drop": recipe.gate.max_drop},
        "shipped": {"cpu": shipped_name, "tensorrt": chosen["tensorrt_name"]},
        "targets": targets,
        "int8_tensorrt_rejected": chosen.get("tensorrt_rejected", []),
        "stages": results, "onnx_parity": parity, "engine": engine, "prune_steps": prune_log,
        "history": history, "seconds": round(seconds, 1), "teacher_forward_clips": teacher_calls,
        "calibration_clips": [c.path.relative_to(root).as_posix() for c in calib_clips],
        "licence": "trained on UrbanSound8K (CC BY-NC 3.0): non-commercial use only",
        **report_extra,
    }
    files.append(write_json(report, out / "report.json"))
    files.append(plot_confusion(shipped["confusion"], contract["labels"], out / "confusion.png",
                                f"{recipe.name} ({shipped_name}), {recipe.data.val_fold}: "
                                f"accuracy {shipped['accuracy']:.3f}"))
    files.append(plot_accuracy_latency(results, out / "accuracy_latency.png", recipe.name))
    write_manifest(
        out, stage="compress", files=files,
        inputs=_inputs(teacher, teacher_path, recipe_path, teacher_inputs),
        recipe=recipe.model_dump(),
        data_lists={"train": urbansound.data_list_sha256(train, root), "val": urbansound.data_list_sha256(val, root),
                    "calibration": urbansound.data_list_sha256(calib_clips, root)},
        extra={**contract, "training_folds": _training_folds(train, teacher_path),
               "targets": targets, "params": shipped["params"], "macs_per_second": shipped["macs_per_second"],
               "size_bytes": Path(model_path).stat().st_size,
               "metrics": {k: {m: v.get(m) for m in ("accuracy", "macro_f1", "latency", "params")}
                           for k, v in results.items()},
               "gate_passed": not failures},
    )
    return report
