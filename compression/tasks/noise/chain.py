"""The noise chain: teacher -> student (distilled on the teacher's views) -> pruned, then the shared tail.

What is noise's own lives here: UrbanSound8K folds (the held-out fold only scores and gates), the
teacher (a checkpoint or a Hugging Face folder), the students, log-mel distillation, pruning, and
``NoiseTail``: INT8 pays for a target only where it keeps the FP32 model's accuracy on a tuning split
carved from the training folds, with quantisation-aware training as TensorRT's second try. From the
FP32 ONNX on, ``compression.chain`` runs (INT8 per target, the choice, the engine, the gate, the
report and manifest). Every stage is scored by ``compression.tasks.noise.evaluate`` (what ``roadside
eval`` runs) on the same held-out clips. Intermediate checkpoints, with their lineage records, go to ``work``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from agent.features.audio import LogMelParams, log_mel

from compression import prune
from compression.chain import artefacts, lineage
from compression.chain.gate import accuracy_and_params, check_parity, raise_if_failed
from compression.chain.plots import classification_plots
from compression.chain.stages import Stages
from compression.chain.tail import Outcome, Tail, finish
from compression.chain.targets import TENSORRT, Target
from compression.datasets.datadir import REPO_ROOT as REPO
from compression.devices import resolve_device
from compression.evaluate import torch_scorer
from compression.export import export_onnx
from compression.latency import per_second_of_audio
from compression.manifest import sha256_file, sha256_json
from compression.tasks.noise import teacher as noise_teacher
from compression.tasks.noise import urbansound
from compression.tasks.noise.distil import Distiller, Sources
from compression.tasks.noise.evaluate import evaluate_noise
from compression.tasks.noise.recipe import CompressionRecipe
from compression.tasks.noise.students import BUILDERS
from compression.tasks.noise.teacher import load_checkpoint

log = logging.getLogger(__name__)
SOURCE_RATE = 16000  # the clips' and the microphones' rate
TUNING_CLIPS = 256   # training-fold clips (not the calibration ones) that choose each target's precision
LICENCE = "trained on UrbanSound8K (CC BY-NC 3.0): non-commercial use only"
KEEP = ("n", "accuracy", "macro_f1", "per_class", "confusion", "top3_accuracy")


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


def run_noise(recipe: CompressionRecipe, recipe_path: Path, data=None, out: Path | None = None,
              work: Path | None = None, device: str | torch.device = "auto") -> dict:
    """The recipe's teacher (a checkpoint or a Hugging Face model folder) through the noise chain."""
    if recipe.teacher.huggingface is not None:
        return _run_huggingface(recipe, recipe_path, data, out, work, device)
    teacher_path = _path(recipe.teacher.checkpoint)
    teacher, tcfg = load_checkpoint(teacher_path)
    oof = None
    if recipe.teacher.out_of_fold:
        from compression.tasks.noise import out_of_fold

        oof = out_of_fold.load([_path(p) for p in recipe.teacher.out_of_fold], tcfg["frontend"], list(tcfg["labels"]))
    return compress(teacher, tcfg["frontend"], list(tcfg["labels"]), recipe, data, out, work,
                    recipe_path=recipe_path, teacher_path=teacher_path, device=device, out_of_fold=oof)


def _path(p: str) -> Path:
    """A recipe's path: absolute, or relative to the repository."""
    return Path(p) if Path(p).is_absolute() else REPO / p


def _run_huggingface(recipe: CompressionRecipe, recipe_path: Path, data=None, out: Path | None = None,
                     work: Path | None = None, device: str | torch.device = "auto") -> dict:
    """A Hugging Face model folder as the teacher: its extractor as our log-mel, its outputs in the
    data's label order; how faithfully our front-end feeds it is measured against optimum's export."""
    from compression.tasks.noise import huggingface

    path = _path(recipe.teacher.huggingface)
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
    tune_clips: list = field(default_factory=list)  # training-fold clips that choose each target's precision
    teacher_identity: dict = field(default_factory=dict)  # the manifest's inputs: which teacher
    calib: np.ndarray | None = None  # student log-mel of the calibration clips
    history: list = field(default_factory=list)
    sources: Sources | None = None  # each clip's teachers, when not the reference teacher alone
    teacher_folds: set = field(default_factory=set)  # folds the KD teachers trained on besides the reference's

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
    run.tune_clips = tune or run.calib_clips
    run.stages = Stages(
        "per s of audio", evaluate=lambda s: evaluate_noise(s, root, clips=val), keep=KEEP,
        cost=lambda macs: {"macs_per_second": macs / run.window},
        latency=lambda path, fe: per_second_of_audio(path, fe, waves[0], SOURCE_RATE),
        tuning=lambda s: evaluate_noise(s, root, clips=run.tune_clips))
    log.info("training on %s (%d clips), held out %s (%d clips); %d tuning clips from the training folds; "
             "device %s", ", ".join(sorted({c.fold for c in train})), len(train), recipe.data.val_fold, len(val),
             len(run.tune_clips), run.device)
    return run


def compress(teacher: torch.nn.Module, teacher_frontend: dict, labels: list[str], recipe: CompressionRecipe,
             data=None, out: Path | None = None, work: Path | None = None, *,
             recipe_path: Path | None = None, teacher_path: Path | None = None,
             teacher_inputs: dict | None = None, report_extra: dict | None = None,
             device: str | torch.device = "auto", out_of_fold=None) -> dict:
    """Compress any PyTorch teacher: ``teacher(x)`` maps log-mel (B, 1, n_mels, T) from
    ``teacher_frontend`` (a LogMelParams dict) to logits over ``labels`` (or a tuple whose
    first item is the logits). ``teacher_inputs`` names the teacher in the manifest when it is
    not one file (default: ``teacher_path``'s sha256, else a hash of its weights);
    ``report_extra`` is added to the report. ``device`` (auto | cpu | cuda[:N]) is where training
    runs; scoring, pruning, quantisation and export run on the CPU. Returns the report; raises
    GateFailed when the result must not ship. ``out_of_fold`` (``out_of_fold.OutOfFold``): teachers the
    student learns from instead, each clip from those that never trained on it.
    """
    t_start = time.time()
    teacher = teacher.eval()
    run = _setup(teacher_frontend, labels, recipe, data, out, work, device)
    run.teacher_identity = _teacher_identity(teacher, teacher_path, teacher_inputs)
    if out_of_fold is not None:
        run.sources = out_of_fold.sources(run.train, run.root)
        run.teacher_identity = {**run.teacher_identity, "out_of_fold": out_of_fold.identity()}
        run.teacher_folds = out_of_fold.folds()
    _teacher_stage(run, teacher)                                   # 1. the reference
    student, distiller = _distil_stage(run, teacher)               # 2. distilled on the teacher's views
    fp32_onnx, prune_log, parity = _prune_and_export(run, student, distiller)  # 3. pruned, KD fine-tuned
    tail = NoiseTail(run, student, distiller)
    outcome = finish(tail, fp32_onnx, parity)  # 4-6. INT8 per target where it pays, TensorRT engine, gate
    report = write_artefacts(run, tail, outcome, recipe_path, parity, prune_log, teacher_path,
                             time.time() - t_start, distiller.teacher_calls, report_extra or {})
    raise_if_failed(outcome.failures)
    return report


def check(recipe: CompressionRecipe, teacher: dict, shipped: dict) -> list[str]:
    """The gate's reasons against one shipped noise model (empty when it passes)."""
    failures = accuracy_and_params(recipe, teacher, shipped)
    if shipped["macs_per_second"] > recipe.budget.max_macs_per_second:
        failures.append(f"{shipped['macs_per_second'] / 1e6:.2f} M MACs per second of audio > "
                        f"budget.max_macs_per_second {recipe.budget.max_macs_per_second / 1e6:.2f} M")
    return failures


class NoiseTail(Tail):
    """INT8 pays for a target where it keeps the FP32 model's accuracy on the tuning clips (training
    folds, never the gate's fold); TensorRT's INT8 gets quantisation-aware training when post-training
    INT8 does not keep it."""

    def __init__(self, run: Run, student: torch.nn.Module, distiller: Distiller):
        super().__init__(run.recipe, run.stages, run.contract, run.work, run.calib)
        self.run, self.student, self.distiller = run, student, distiller

    def check(self, teacher: dict, shipped: dict) -> list[str]:
        return check(self.recipe, teacher, shipped)

    def parity_failures(self, parity: dict) -> list[str]:
        return check_parity(self.recipe, parity)

    def tuning_loss(self, stage: str, path: Path) -> float:
        """Accuracy points ``stage`` loses against the FP32 model on the tuning clips."""
        return 100 * (self.stages.tuned[self.fp32_stage] - self.stages.tune(stage, self.onnx_scorer(path)))

    def accept(self, target: Target, stage: str, path: Path) -> tuple[bool, str]:
        lost = self.tuning_loss(stage, path)
        n, max_drop = len(self.run.tune_clips), self.recipe.gate.max_drop
        if lost <= max_drop:
            return True, f"{-lost:+.2f} points against FP32 on the {n} tuning clips (gate.max_drop {max_drop})"  # a change: - is a loss
        return False, f"loses {lost:.2f} points against FP32 on the {n} tuning clips (gate.max_drop {max_drop})"

    def retry(self, target: Target) -> tuple[str, Path] | None:
        """Quantisation-aware training for TensorRT (it wins back accuracy, not parameters or MACs)."""
        if target is not TENSORRT or not self.recipe.quantise.qat_epochs:
            return None
        run = self.run
        path, history = qat_stage(self.student, self.recipe, run.example(), run.calib, self.distiller, run.work,
                                  run.contract)
        run.history += history
        self.score_int8("int8_tensorrt_qat", path)
        return "int8_tensorrt_qat", path


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
                          run.waves, y, len(run.labels), SOURCE_RATE, recipe.distil, recipe.seed, device=run.device,
                          sources=run.sources)
    config = {"student": recipe.student.model_dump(), "distil": recipe.distil.model_dump(), "seed": recipe.seed,
              "threads": recipe.threads, "teacher_frontend": run.teacher_frontend, "device": run.device.type}
    inputs = {"teacher": sha256_json(run.teacher_identity), "train": urbansound.data_list_sha256(run.train, run.root)}
    run.history += lineage.train_or_reuse(
        run.work / "student.pt", "distil", config, inputs, student,
        lambda: distiller.run(student, recipe.distil.epochs, recipe.distil.lr, "distil"), companions=(distiller,))
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
        torch.save(student, run.work / "pruned.pt")  # no reuse: pruning changes the architecture
        lineage.write(run.work / "pruned.pt", "prune", recipe.prune.model_dump(),
                      {"student": sha256_file(run.work / "student.pt")}, history[-1] if history else {})
    fp32_onnx = run.export(student, "pruned_fp32.onnx")
    macs, params = prune.count(student, example)
    scorer = torch_scorer(student, recipe.task, run.labels, run.sfe, run.window)
    run.stages.score("pruned", scorer, fp32_onnx, params, macs)
    run.stages.tune("pruned", scorer)
    parity = onnx_parity(student, fp32_onnx, run.val[:16], run.sfe, run.window)
    return fp32_onnx, prune_log, parity


def prune_stage(student, recipe: CompressionRecipe, example: torch.Tensor, calib: np.ndarray,
                distiller: Distiller, params: int) -> tuple[list[dict], list[dict]]:
    """Prune in ``prune.steps`` steps (to the plan, or to ``prune.target_params``), KD fine-tuning after each."""
    from compression.tasks.noise.students.slim import SlimTeacher

    cfg, log_steps, history = recipe.prune, [], []
    if cfg.method == "reconstruct" and not isinstance(student, SlimTeacher):
        raise ValueError(f"prune.method reconstruct re-fits a whole slimmed teacher; this student is a "
                         f"{type(student).__name__}: use prune.method magnitude")
    x = torch.from_numpy(calib)
    planned = cfg.method == "reconstruct" and cfg.plan is not None
    targets = [0] * cfg.steps if planned else prune.step_targets(params, cfg.target_params, cfg.steps)
    widths = None
    mimic = None
    if cfg.mimic_weight:
        from compression.tasks.noise.mimic import Mimic

        mimic = Mimic(student, cfg.mimic_weight)  # the whole student, before the first cut
    for k, target in enumerate(targets):
        before = prune.count(student, example)
        if cfg.method == "reconstruct":
            from compression.tasks.noise import reconstruct

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
        with _fixed_before_cut(student, cfg):
            history += distiller.run(student, epochs, cfg.lr, f"prune{k + 1}", mimic=mimic)
        log_steps.append(info)
    return log_steps, history


@contextlib.contextmanager
def _fixed_before_cut(student, cfg):
    """With ``prune.retrain: from_cut``, the blocks before the first one the plan changes are not trained
    while the KD after a cut runs (their weights and BatchNorm statistics stay the distilled student's)."""
    fixed = []
    if cfg.retrain == "from_cut":
        first = min(cfg.plan.blocks, default=len(student.body.features) - 1)  # no block listed: the embedding on
        fixed = [p for p in student.body.features[:first].parameters() if p.requires_grad]
    for p in fixed:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in fixed:
            p.requires_grad_(True)


def qat_stage(student, recipe: CompressionRecipe, example: torch.Tensor, calib: np.ndarray, distiller: Distiller,
              work: Path, contract: dict) -> tuple[Path, list[dict]]:
    """A fake-quantised copy of the student, KD fine-tuned, exported with Q/DQ pairs for TensorRT."""
    import copy

    from compression import qat

    qstudent = copy.deepcopy(student)
    percentile, keep_float = recipe.quantise.flavour("tensorrt")
    n = qat.prepare(qstudent, calib, percentile, keep_float)
    log.info("quantisation-aware training: %d layers fake-quantised, %d epochs", n, recipe.quantise.qat_epochs)
    history = distiller.run(qstudent, recipe.quantise.qat_epochs, recipe.quantise.qat_lr, "qat")
    qat.freeze(qstudent)
    path = export_onnx(qstudent, example, work / "int8_tensorrt_qat.onnx", contract)
    return path, history


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


def _teacher_identity(teacher: torch.nn.Module, teacher_path: Path | None, teacher_inputs: dict | None) -> dict:
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
    return ident


def write_artefacts(run: Run, tail: NoiseTail, outcome: Outcome, recipe_path, parity, prune_log, teacher_path,
                    seconds, teacher_calls, report_extra) -> dict:
    """The shipped folder (compression.chain.artefacts) with what only the noise chain records."""
    recipe, root, stages = run.recipe, run.root, run.stages
    shipped = stages.results[outcome.choices["onnxruntime"].stage]
    lists = {"train": run.train, "val": run.val, "calibration": run.calib_clips, "tuning": run.tune_clips}
    return artefacts.write_artefacts(
        tail, outcome, run.out, parity=parity, history=run.history, seconds=seconds,
        inputs={**run.teacher_identity, "recipe_file": Path(recipe_path).name if recipe_path else None},
        data_lists={k: urbansound.data_list_sha256(v, root) for k, v in lists.items()}, licence=LICENCE,
        plots=classification_plots(run.out, run.labels, recipe.name, recipe.data.val_fold),
        report_extra={
            "tuning": {"clips": len(run.tune_clips), "folds": sorted({c.fold for c in run.tune_clips}),
                       "accuracy": stages.tuned,
                       "why": "training-fold clips (not the calibration ones): they choose each target's "
                              f"precision; {recipe.data.val_fold} only scores and gates"},
            "prune_steps": prune_log, "teacher_forward_clips": teacher_calls, "device": str(run.device),
            "calibration_clips": [c.path.relative_to(root).as_posix() for c in run.calib_clips], **report_extra},
        manifest_extra={"training_folds": sorted(set(_training_folds(run.train, teacher_path)) | run.teacher_folds),
                        "macs_per_second": shipped["macs_per_second"]})
