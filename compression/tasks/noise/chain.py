"""``roadside compress``: teacher -> student (distil) -> pruned -> INT8 -> ONNX (+ TensorRT), gated.

Every stage is scored by the same evaluation code (``compression.evaluate``) on the
same held-out clips; every stage's numbers reach the report even when the gate fails.
Which precision each target gets is chosen on a tuning split carved from the training
folds (never on the held-out fold, which only the gate reads). Writes to ``out`` (the
shipped folder): model.onnx (the CPU artefact: INT8 where it is faster and keeps its
accuracy, else FP32), model_trt.onnx (symmetric INT8 QDQ for TensorRT), manifest.json,
report.json, confusion.png, accuracy_latency.png. Intermediate checkpoints go to ``work``.
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from agent.features.audio import LogMelParams, log_mel

from . import gate, prune
from .datasets import urbansound
from .devices import resolve_device
from .distil import Distiller
from .evaluate import Scorer, evaluate_noise, torch_scorer
from .export import export_onnx
from .latency import per_second_of_audio
from .manifest import sha256_file, write_manifest
from .metrics import top1_agreement, top1_confidence
from .recipe import CompressionRecipe, load_recipe
from .report import plot_accuracy_latency, plot_confusion, ship_models, write_json
from .students import BUILDERS
from .teachers import noise as noise_teacher
from .teachers.noise import load_checkpoint

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
SOURCE_RATE = 16000  # the clips' and the microphones' rate
TUNING_CLIPS = 256   # training-fold clips (not the calibration ones) that choose each target's precision
METRIC_KEYS = ("accuracy", "macro_f1", "latency", "params", "agreement", "confidence")


class Stages:
    """Collects each stage's measured numbers, in order (the first stage scored is the teacher)."""

    def __init__(self, val_clips: list, root: Path, labels: list[str], window_seconds: float, wave: np.ndarray,
                 tune_clips: list | None = None):
        self.val_clips, self.root, self.labels = val_clips, root, labels
        self.window_seconds, self.wave = window_seconds, wave  # one real window for latency
        self.tune_clips = tune_clips or []
        self.results: dict[str, dict] = {}
        self.tuning: dict[str, float] = {}  # stage -> accuracy on the tuning clips

    def score(self, name: str, scorer: Scorer, onnx_path: Path | None, params: int, macs: int) -> dict:
        metrics = evaluate_noise(scorer, self.root, clips=self.val_clips)
        entry = {k: metrics[k] for k in ("n", "accuracy", "macro_f1", "per_class", "confusion", "top3_accuracy")}
        entry.update(params=params, macs_per_second=macs / self.window_seconds, frontend=scorer.frontend)
        if onnx_path is not None:
            entry["latency"] = per_second_of_audio(onnx_path, scorer.frontend, self.wave, SOURCE_RATE)
            entry["onnx_bytes"] = onnx_path.stat().st_size
            entry["int8_weight_bytes"] = int8_weight_bytes(onnx_path)
        logits = metrics["logits"]
        # the rollout controller's default shadow gates: top-1 agreement with the teacher, mean top-1 probability
        teacher = self.results.get("teacher", {}).get("_logits", logits)
        entry["agreement"] = top1_agreement(logits, teacher)
        entry["confidence"] = top1_confidence(logits)
        entry["_logits"] = logits
        self.results[name] = entry
        log.info("%s: accuracy %.4f, macro-F1 %.4f, agreement %.4f, %d params, %.2f M MACs/s%s", name,
                 entry["accuracy"], entry["macro_f1"], entry["agreement"], params, entry["macs_per_second"] / 1e6,
                 f", {entry['latency']['total_ms']:.3f} ms per s of audio" if onnx_path else "")
        return entry

    def tune(self, name: str, scorer: Scorer) -> float:
        """Accuracy of a stage on the tuning clips (training folds): what chooses precisions, never the gate's fold."""
        if name not in self.tuning:
            self.tuning[name] = float(evaluate_noise(scorer, self.root, clips=self.tune_clips)["accuracy"])
            log.info("%s on the %d tuning clips: accuracy %.4f", name, len(self.tune_clips), self.tuning[name])
        return self.tuning[name]

    def agreement(self, a: str, b: str) -> float:
        """Share of clips on which stages ``a`` and ``b`` give the same top-1 class."""
        return top1_agreement(self.results[a]["_logits"], self.results[b]["_logits"])


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


# task -> "module:function(recipe, recipe_path, data, out, work[, device]) -> report" of its chain
def run(recipe_path: Path, data=None, out: Path | None = None, work: Path | None = None, *,
        device: str = "auto", **overrides) -> dict:
    """``roadside compress``: the recipe's chain for its task. Raises GateFailed when the result must not ship.
    ``device`` (auto | cpu | cuda[:N]) is where training runs; a chain that does not take it trains on the CPU."""
    from .tasks import get

    recipe = load_recipe(recipe_path, **overrides)
    dev = resolve_device(device)
    chain = get(recipe.task).load("chain")  # each task's chain, from compression.tasks
    if "device" in inspect.signature(chain).parameters:
        return chain(recipe, recipe_path, data, out, work, device=dev)
    if dev.type != "cpu":
        log.warning("the %s chain trains on the CPU only: device %s is not used", recipe.task, dev)
    return chain(recipe, recipe_path, data, out, work)


def run_noise(recipe: CompressionRecipe, recipe_path: Path, data=None, out: Path | None = None,
              work: Path | None = None, device: str | torch.device = "auto") -> dict:
    """The recipe's teacher (a checkpoint or a Hugging Face model folder) through the noise chain."""
    if recipe.teacher.huggingface is not None:
        return _run_huggingface(recipe, recipe_path, data, out, work, device)
    teacher_path = Path(recipe.teacher.checkpoint)
    teacher_path = teacher_path if teacher_path.is_absolute() else REPO / teacher_path
    teacher, tcfg = load_checkpoint(teacher_path)
    return compress(teacher, tcfg["frontend"], list(tcfg["labels"]), recipe, data, out, work,
                    recipe_path=recipe_path, teacher_path=teacher_path, device=device)


def _run_huggingface(recipe: CompressionRecipe, recipe_path: Path, data=None, out: Path | None = None,
                     work: Path | None = None, device: str | torch.device = "auto") -> dict:
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
                    report_extra={"teacher_frontend_fidelity": check}, device=device)


@dataclass
class Run:
    """What every stage of one noise run shares: the recipe, the data splits, the scores so far."""

    recipe: CompressionRecipe
    labels: list[str]
    teacher_frontend: dict
    out: Path
    work: Path
    root: Path
    train: list          # training clips (every fold but data.val_fold), loaded into ``waves``
    val: list            # the held-out fold: the gate's clips
    waves: np.ndarray    # (N, samples) training clips at 16 kHz
    device: torch.device
    stages: Stages = None
    calib_clips: list = field(default_factory=list)
    calib: np.ndarray | None = None  # student log-mel of the calibration clips
    history: list = field(default_factory=list)

    @property
    def sfe(self) -> dict:
        return self.recipe.student.frontend

    @property
    def window(self) -> float:
        return self.recipe.student.window_seconds

    @property
    def contract(self) -> dict:
        r = self.recipe
        return {"task": r.task, "labels": self.labels, "frontend": self.sfe, "window_seconds": self.window,
                "name": r.name, "version": r.version}

    def example(self, student: bool = True) -> torch.Tensor:
        return _example(self.sfe if student else self.teacher_frontend, self.window)

    def export(self, model: torch.nn.Module, name: str, metadata: dict | None = None) -> Path:
        return export_onnx(model, self.example(), self.work / name, metadata or {"task": self.recipe.task})


def _setup(teacher_frontend: dict, labels: list[str], recipe: CompressionRecipe, data, out, work,
           device) -> Run:
    """Seeds, folders, the splits and the training clips in memory; the calibration and tuning clips."""
    torch.manual_seed(recipe.seed)
    torch.set_num_threads(recipe.threads)
    out = Path(out or REPO / "agent" / "models" / recipe.task)
    work = Path(work or REPO / "runs" / recipe.name)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    root, train, val = _splits(recipe, data)
    waves, train, _ = urbansound.load_clips(train, SOURCE_RATE, recipe.student.window_seconds)
    run = Run(recipe, labels, LogMelParams.from_dict(teacher_frontend).to_dict(), out, work, root, train, val,
              waves, device if isinstance(device, torch.device) else resolve_device(device))
    order = np.random.default_rng(recipe.seed).permutation(len(train))
    run.calib_clips = [train[i] for i in sorted(order[:recipe.data.calibration_clips])]
    run.calib = _features(waves[sorted(order[:recipe.data.calibration_clips])], run.sfe)
    # the clips after the calibration ones in the same seeded order: training folds, so fold 2 never chooses
    tune = [train[i] for i in sorted(order[recipe.data.calibration_clips:][:TUNING_CLIPS])]
    run.stages = Stages(val, root, labels, run.window, waves[0], tune or run.calib_clips)
    log.info("training on %s (%d clips), held out %s (%d clips); %d tuning clips from the training folds; "
             "device %s", ", ".join(sorted({c.fold for c in train})), len(train), recipe.data.val_fold, len(val),
             len(run.stages.tune_clips), run.device)
    return run


def compress(teacher: torch.nn.Module, teacher_frontend: dict, labels: list[str], recipe: CompressionRecipe,
             data=None, out: Path | None = None, work: Path | None = None, *,
             recipe_path: Path | None = None, teacher_path: Path | None = None,
             teacher_inputs: dict | None = None, report_extra: dict | None = None,
             device: str | torch.device = "auto") -> dict:
    """Compress any PyTorch teacher: ``teacher(x)`` maps log-mel (B, 1, n_mels, T) from
    ``teacher_frontend`` (a LogMelParams dict) to logits over ``labels`` (or a tuple whose
    first item is the logits). ``teacher_inputs`` names the teacher in the manifest when it is
    not one file (default: ``teacher_path``'s sha256, else a hash of its weights);
    ``report_extra`` is added to the report. ``device`` (auto | cpu | cuda[:N]) is where training
    runs; scoring, pruning, quantisation and export run on the CPU. Returns the report; raises
    GateFailed when the result must not ship.
    """
    t_start = time.time()
    teacher = teacher.eval()
    run = _setup(teacher_frontend, labels, recipe, data, out, work, device)
    _teacher_stage(run, teacher)                                   # 1. the reference
    student, distiller = _distil_stage(run, teacher)               # 2. distilled on the teacher's views
    fp32_onnx, prune_log, parity = _prune_and_export(run, student, distiller)  # 3. pruned, KD fine-tuned
    chosen = quantise_stage(run, student, fp32_onnx, distiller)    # 4. INT8 per target, where it pays
    engine = build_engine_stage(recipe, chosen["tensorrt"] or chosen["cpu"], run.work)  # 5. TensorRT
    failures = gate_stage(run, chosen, fp32_onnx, parity)          # 6. the gate, on what ships
    report = write_artefacts(run, recipe_path, chosen, failures, engine, parity, prune_log, teacher,
                             teacher_path, time.time() - t_start, distiller.teacher_calls,
                             teacher_inputs, report_extra or {})
    if failures:
        raise gate.GateFailed("the compressed model did not pass the gate:\n  " + "\n  ".join(failures))
    return report


def _teacher_stage(run: Run, teacher: torch.nn.Module) -> None:
    """The teacher exported and scored: the reference every stage is measured against."""
    example = run.example(student=False)
    path = export_onnx(teacher, example, run.work / "teacher.onnx", {"task": run.recipe.task})
    macs, params = prune.count(teacher, example)
    scorer = torch_scorer(teacher, run.recipe.task, run.labels, run.teacher_frontend, run.window)
    run.stages.score("teacher", scorer, path, params, macs)


def _distil_stage(run: Run, teacher: torch.nn.Module) -> tuple[torch.nn.Module, Distiller]:
    """The student built to the recipe, distilled on the same views the teacher sees."""
    recipe = run.recipe
    example = run.example()
    student = BUILDERS[recipe.student.type](teacher, len(run.labels), example.shape[2], recipe.student)
    y = np.array([c.label for c in run.train])
    distiller = Distiller(teacher, LogMelParams.from_dict(run.teacher_frontend), LogMelParams.from_dict(run.sfe),
                          run.waves, y, len(run.labels), SOURCE_RATE, recipe.distil, recipe.seed, device=run.device)
    run.history += distiller.run(student, recipe.distil.epochs, recipe.distil.lr, "distil")
    torch.save(student.state_dict(), run.work / "student.pt")
    path = run.export(student, "student.onnx")
    macs, params = prune.count(student, example)
    run.stages.score("student", torch_scorer(student, recipe.task, run.labels, run.sfe, run.window), path,
                     params, macs)
    return student, distiller


def _prune_and_export(run: Run, student: torch.nn.Module, distiller: Distiller) -> tuple[Path, list, dict]:
    """Structured pruning (each step followed by KD fine-tuning), the FP32 ONNX and its parity with PyTorch."""
    recipe, example = run.recipe, run.example()
    prune_log = []
    if recipe.prune.enabled:
        params = prune.count(student, example)[1]
        prune_log, history = prune_stage(student, recipe, example, run.calib, distiller, params)
        run.history += history
        torch.save(student, run.work / "pruned.pt")
    fp32_onnx = run.export(student, "pruned_fp32.onnx")
    macs, params = prune.count(student, example)
    scorer = torch_scorer(student, recipe.task, run.labels, run.sfe, run.window)
    run.stages.score("pruned", scorer, fp32_onnx, params, macs)
    run.stages.tune("pruned", scorer)
    parity = onnx_parity(student, fp32_onnx, run.val[:16], run.sfe, run.window)
    return fp32_onnx, prune_log, parity


def quantise_stage(run: Run, student: torch.nn.Module, fp32_onnx: Path, distiller: Distiller) -> dict:
    """INT8 in two flavours, calibrated on a recorded list of training clips, scored like every stage. Each
    target gets INT8 only where it pays, chosen on the tuning clips (training folds) and never on the gate's
    fold: the CPU when INT8 is measured faster and loses at most ``gate.max_drop`` points against FP32 there;
    TensorRT when it keeps that accuracy (quantisation-aware training when post-training INT8 does not),
    else an FP16 engine from the FP32 model. Returns the files chosen, their stage names and why."""
    chosen = {"cpu": fp32_onnx, "cpu_stage": "pruned", "tensorrt": None, "tensorrt_stage": None,
              "tensorrt_rejected": [], "why": {}}
    if not run.recipe.quantise.enabled:
        chosen["why"] = {"onnxruntime": "FP32: quantise.enabled is false",
                         "tensorrt": "FP16 engine from the FP32 model: quantise.enabled is false"}
        return chosen
    paths = {flavour: _int8(run, fp32_onnx, flavour) for flavour in ("cpu", "tensorrt")}
    _choose_cpu(run, chosen, paths["cpu"])
    _choose_tensorrt(run, chosen, paths["tensorrt"], student, distiller)
    return chosen


def _int8(run: Run, fp32_onnx: Path, flavour: str) -> Path:
    """Post-training INT8 of one flavour (uint8 activations for the CPU, symmetric int8 for TensorRT)."""
    from .quantise import quantise

    q = run.recipe.quantise
    percentile, keep_float = q.flavour(flavour)
    path = quantise(fp32_onnx, run.work / f"int8_{flavour}.onnx", run.calib, flavour, q.calibrate_method,
                    percentile, keep_float=keep_float)
    fp32 = run.stages.results["pruned"]
    entry = run.stages.score(f"int8_{flavour}", _onnx_scorer(path, run.contract), path, fp32["params"],
                             fp32["macs_per_second"] * run.window)
    entry["top1_agreement_with_fp32"] = run.stages.agreement(f"int8_{flavour}", "pruned")
    return path


def _tuning_loss(run: Run, name: str, path: Path) -> float:
    """Accuracy points stage ``name`` loses against the FP32 model on the tuning clips."""
    return 100 * (run.stages.tuning["pruned"] - run.stages.tune(name, _onnx_scorer(path, run.contract)))


def _choose_cpu(run: Run, chosen: dict, path: Path) -> None:
    int8, fp32 = run.stages.results["int8_cpu"]["latency"], run.stages.results["pruned"]["latency"]
    if int8["model_ms"] >= fp32["model_ms"]:
        chosen["why"]["onnxruntime"] = (f"FP32: INT8 is not faster on this CPU (INT8 {int8['model_ms']:.3f} ms, "
                                        f"FP32 {fp32['model_ms']:.3f} ms per s of audio, model only)")
        log.info("INT8 is not faster than FP32 on this CPU: shipping FP32 for onnxruntime")
        return
    lost, max_drop = _tuning_loss(run, "int8_cpu", path), run.recipe.gate.max_drop
    if lost > max_drop:
        chosen["why"]["onnxruntime"] = (f"FP32: INT8 is faster but loses {lost:.2f} points against FP32 on the "
                                        f"tuning clips (gate.max_drop {max_drop})")
        return
    chosen.update(cpu=path, cpu_stage="int8_cpu")
    chosen["why"]["onnxruntime"] = (f"INT8: {fp32['model_ms'] / int8['model_ms']:.2f}x faster than FP32 on this CPU "
                                    f"(model only), {lost:+.2f} points lost against FP32 on the tuning clips")


def _choose_tensorrt(run: Run, chosen: dict, path: Path, student: torch.nn.Module, distiller: Distiller) -> None:
    """Post-training INT8 for TensorRT, else quantisation-aware training (it wins back accuracy, not
    parameters or MACs), else nothing: TensorRT then builds an FP16 engine from the FP32 model."""
    recipe, max_drop, n = run.recipe, run.recipe.gate.max_drop, len(run.stages.tune_clips)
    for name in ("int8_tensorrt", "int8_tensorrt_qat"):
        if name == "int8_tensorrt_qat":
            if not recipe.quantise.qat_epochs:
                break
            log.warning("post-training INT8 for TensorRT loses too much on the tuning clips (%s): "
                        "quantisation-aware training", chosen["tensorrt_rejected"][-1])
            path, history = qat_stage(student, recipe, run.example(), run.calib, distiller, run.work, run.contract)
            run.history += history
            fp32 = run.stages.results["pruned"]
            entry = run.stages.score(name, _onnx_scorer(path, run.contract), path, fp32["params"],
                                     fp32["macs_per_second"] * run.window)
            entry["top1_agreement_with_fp32"] = run.stages.agreement(name, "pruned")
        lost = _tuning_loss(run, name, path)
        if lost <= max_drop:
            chosen.update(tensorrt=path, tensorrt_stage=name)
            chosen["why"]["tensorrt"] = (f"INT8 ({name}): {lost:+.2f} points against FP32 on the {n} tuning clips "
                                         f"(gate.max_drop {max_drop})")
            return
        chosen["tensorrt_rejected"].append(f"{name}: loses {lost:.2f} points against FP32 on the {n} tuning "
                                           f"clips (gate.max_drop {max_drop})")
    log.warning("INT8 for TensorRT loses too much (%s): TensorRT gets the FP32 model (FP16 engine)",
                "; ".join(chosen["tensorrt_rejected"]))
    chosen["why"]["tensorrt"] = "FP16 engine from the FP32 model: " + "; ".join(chosen["tensorrt_rejected"])


def gate_stage(run: Run, chosen: dict, fp32_onnx: Path, parity: dict) -> list[str]:
    """Reasons to refuse the run, on the gate's fold: the model each target gets against the teacher and the
    budget (the CPU model and TensorRT's), and the ONNX export's parity with PyTorch."""
    cpu_name = chosen["cpu_stage"]
    trt_name = chosen["tensorrt_stage"] if chosen["tensorrt"] is not None else cpu_name
    chosen["tensorrt_name"] = trt_name
    teacher = run.stages.results["teacher"]
    failures = [f"{target} model ({name}): {reason}"
                for target, name in dict.fromkeys((("CPU", cpu_name), ("TensorRT", trt_name)))
                for reason in gate.check(run.recipe, teacher, run.stages.results[name])]
    return failures + gate.check_parity(run.recipe, parity)


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


def write_artefacts(run: Run, recipe_path, chosen, failures, engine, parity, prune_log, teacher, teacher_path,
                    seconds, teacher_calls, teacher_inputs, report_extra) -> dict:
    """The shipped folder: the models each target gets, report.json, the plots and the manifest."""
    recipe, stages = run.recipe, run.stages
    results = {k: {kk: vv for kk, vv in v.items() if kk != "_logits"} for k, v in stages.results.items()}
    shipped_name = chosen["cpu_stage"]
    shipped = results[shipped_name]
    files, targets = ship_models(run.out, chosen["cpu"], chosen["tensorrt"],
                                 "int8" if shipped_name.startswith("int8") else "fp32", run.contract)
    for target, why in chosen["why"].items():
        targets[target]["why"] = why
    report = {
        "task": recipe.task, "name": recipe.name, "version": recipe.version,
        "gate": {"passed": not failures, "failures": failures, "max_drop": recipe.gate.max_drop},
        "shipped": {"cpu": shipped_name, "tensorrt": chosen["tensorrt_name"]},
        "targets": targets,
        "int8_tensorrt_rejected": chosen["tensorrt_rejected"],
        "tuning": {"clips": len(stages.tune_clips), "folds": sorted({c.fold for c in stages.tune_clips}),
                   "accuracy": stages.tuning,
                   "why": "training-fold clips (not the calibration ones): they choose each target's precision; "
                          f"{recipe.data.val_fold} only scores and gates"},
        "stages": results, "onnx_parity": parity, "engine": engine, "prune_steps": prune_log,
        "history": run.history, "seconds": round(seconds, 1), "teacher_forward_clips": teacher_calls,
        "device": str(run.device),
        "calibration_clips": [c.path.relative_to(run.root).as_posix() for c in run.calib_clips],
        "licence": "trained on UrbanSound8K (CC BY-NC 3.0): non-commercial use only",
        **report_extra,
    }
    files.append(write_json(report, run.out / "report.json"))
    files.append(plot_confusion(shipped["confusion"], run.labels, run.out / "confusion.png",
                                f"{recipe.name} ({shipped_name}), {recipe.data.val_fold}: "
                                f"accuracy {shipped['accuracy']:.3f}"))
    files.append(plot_accuracy_latency(results, run.out / "accuracy_latency.png", recipe.name))
    _write_manifest(run, files, targets, results, shipped, failures, teacher, teacher_path, recipe_path,
                    teacher_inputs)
    return report


def _write_manifest(run: Run, files, targets, results, shipped, failures, teacher, teacher_path, recipe_path,
                    teacher_inputs) -> Path:
    """Lineage: inputs, recipe, the data lists' hashes, the folds trained on, each stage's metrics."""
    root = run.root
    return write_manifest(
        run.out, stage="compress", files=files,
        inputs=_inputs(teacher, teacher_path, recipe_path, teacher_inputs),
        recipe=run.recipe.model_dump(),
        data_lists={"train": urbansound.data_list_sha256(run.train, root),
                    "val": urbansound.data_list_sha256(run.val, root),
                    "calibration": urbansound.data_list_sha256(run.calib_clips, root),
                    "tuning": urbansound.data_list_sha256(run.stages.tune_clips, root)},
        extra={**run.contract, "training_folds": _training_folds(run.train, teacher_path),
               "targets": targets, "params": shipped["params"], "macs_per_second": shipped["macs_per_second"],
               "size_bytes": Path(files[0]).stat().st_size,
               "metrics": {k: {m: v.get(m) for m in METRIC_KEYS} for k, v in results.items()},
               "gate_passed": not failures},
    )
