"""``roadside compress --recipe compression/recipes/vehicles.yaml``: vehicle type from camera crops.

teacher (ResNet trained on the training split, reused through its lineage record) -> student
(distilled on the teacher's views, reused likewise) -> pruned (torch-pruning, channels in
multiples of 8, KD re-fits), then the shared tail (``compression.chain``): INT8 per target,
calibrated on a recorded list of training crops, the choice (``VehiclesTail``), the engine, the
gate, the report and manifest. Every stage is scored on the held-out split with the same code
(``compression.tasks.vehicles.evaluate``), and every stage's numbers reach the report even when
the gate fails.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from agent.features.image import ImageParams

from compression import prune
from compression.chain import artefacts, lineage
from compression.chain.gate import check_parity, raise_if_failed
from compression.chain.plots import classification_plots
from compression.chain.stages import Stages
from compression.chain.tail import Tail, finish
from compression.chain.targets import ONNXRUNTIME, Target
from compression.datasets.datadir import REPO_ROOT as REPO
from compression.evaluate import Scorer, torch_scorer
from compression.export import export_onnx
from compression.image_augment import Views, decode_all
from compression.image_train import Schedule, TeacherCache, predict, train
from compression.manifest import sha256_file, sha256_json
from compression.tasks.vehicles import dataset as vehicles
from compression.tasks.vehicles import teacher as teachers
from compression.tasks.vehicles.evaluate import evaluate_vehicles
from compression.tasks.vehicles.recipe import VehiclesRecipe
from compression.tasks.vehicles.report import LICENCE, check, per_image, relative

log = logging.getLogger(__name__)
TASK = "vehicles"


def _repo_path(p: str) -> Path:
    return Path(p) if Path(p).is_absolute() else REPO / p


def _first_per_class(items, n: int | None) -> list:
    """The first ``n`` items of each class (smoke runs), order kept."""
    if n is None:
        return list(items)
    seen: dict[int, int] = {}
    out = []
    for path, y in items:
        seen[y] = seen.get(y, 0) + 1
        if seen[y] <= n:
            out.append((path, y))
    return out


@dataclass
class Data:
    root: Path
    split: vehicles.Split
    train_items: list  # (path, label) of the decoded training crops
    val_items: list
    images: list[np.ndarray]  # decoded training crops, uint8 RGB
    labels: np.ndarray
    skipped: int  # unreadable training crops

    @property
    def train_sha256(self) -> str:
        """Hash of the training crops actually used (smoke runs use fewer): part of every cache key."""
        return sha256_json(relative(self.train_items, self.root))


def load_data(recipe: VehiclesRecipe, data) -> Data:
    """The recorded split (made and saved on first use), trimmed for smoke runs, training crops decoded."""
    root = vehicles.find_root(data)
    split = vehicles.split_for(root, _repo_path(recipe.data.split_file), recipe.seed, recipe.data.val_fraction)
    train_items = _first_per_class(split.train, recipe.data.max_train_per_class)
    val_items = _first_per_class(split.val, recipe.data.max_val_per_class)
    images, y, kept, skipped = decode_all([p for p, _ in train_items], [c for _, c in train_items])
    return Data(root, split, [train_items[k] for k in kept], val_items, images, y, skipped)


def run_vehicles(recipe: VehiclesRecipe, recipe_path: Path | None = None, data=None, out: Path | None = None,
                 work: Path | None = None) -> dict:
    """The whole chain; returns the report, raises GateFailed (after writing it) when the result must not ship."""
    t_start = time.time()
    torch.manual_seed(recipe.seed)
    torch.set_num_threads(recipe.threads)
    out = Path(out or REPO / "agent" / "models" / TASK)
    work = Path(work or REPO / "runs" / recipe.name)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    d = load_data(recipe, data)
    labels = list(d.split.labels)
    sfe, tfe = recipe.student.frontend, teachers.teacher_frontend(recipe)
    s_params, t_params = ImageParams.from_dict(sfe), ImageParams.from_dict(tfe)
    s_example, t_example = (torch.zeros(1, *p.output_shape) for p in (s_params, t_params))
    image = decode_all([d.val_items[0][0]], [0])[0][0]  # one real crop for latency
    stages = Stages("per crop", evaluate=lambda s: evaluate_vehicles(s, d.root, items=d.val_items),
                    keep=("n", "accuracy", "macro_f1", "per_class", "confusion", "skipped"),
                    cost=lambda macs: {"macs_per_image": macs},
                    latency=lambda path, fe: per_image(path, fe, image))

    # 1. teacher: trained on the training split (or reused), the reference every stage is measured against
    t_val, t_val_y, _, _ = vehicles.load_images(d.val_items, t_params, progress=False)
    teacher, teacher_path, teacher_history = teachers.train_or_load(recipe, d.split, d.train_sha256, d.images,
                                                                    d.labels, t_val, t_val_y, work, REPO)
    macs, params = prune.count(teacher, t_example)
    t_onnx = export_onnx(teacher, t_example, work / "teacher.onnx", {"task": TASK})
    stages.score("teacher", _scorer(teacher, labels, tfe), t_onnx, params, macs)

    # 2-3. student distilled on the teacher's views, then pruned with KD re-fits
    student, cache, history, prune_log = distil_and_prune(recipe, teacher, sha256_file(teacher_path), d, s_params,
                                                          t_params, stages, work)
    fp32_onnx = export_onnx(student, s_example, work / "pruned_fp32.onnx", {"task": TASK})
    macs, params = prune.count(student, s_example)
    stages.score("pruned", _scorer(student, labels, sfe), fp32_onnx, params, macs)
    parity = onnx_parity(student, fp32_onnx, d.val_items[:16], s_params)

    # 4-6. the shared tail: INT8 per target where it pays, TensorRT engine, gate
    calib, calib_items = calibration_crops(recipe, d, s_params)
    contract = {"task": TASK, "labels": labels, "frontend": sfe, "window_seconds": 0.0,
                "name": recipe.name, "version": recipe.version}
    tail = VehiclesTail(recipe, stages, contract, work, calib)
    outcome = finish(tail, fp32_onnx, parity)

    lists = {"split": d.split.sha256, "train": relative(d.train_items, d.root), "val": relative(d.val_items, d.root),
             "calibration": relative(calib_items, d.root)}
    report = artefacts.write_artefacts(
        tail, outcome, out, parity=parity, history=history, seconds=time.time() - t_start, licence=LICENCE,
        inputs={"teacher": teacher_path.name, "teacher_sha256": sha256_file(teacher_path),
                "split_sha256": d.split.sha256, "recipe_file": Path(recipe_path).name if recipe_path else None},
        data_lists={k: v if isinstance(v, str) else sha256_json(v) for k, v in lists.items()},  # split: its own sha
        plots=classification_plots(out, labels, recipe.name, "validation split", xlabel="ms per crop (front-end + "
                                                                                         "model, 1 thread)"),
        report_extra={"prune_steps": prune_log, "teacher_history": teacher_history,
                      "teacher_forward_views": cache.calls, "skipped_train_images": d.skipped,
                      "split_file": str(recipe.data.split_file), "calibration_images": lists["calibration"]},
        manifest_extra={"macs_per_image": stages.results[outcome.shipped["onnxruntime"]]["macs_per_image"]})
    raise_if_failed(outcome.failures)
    return report


class VehiclesTail(Tail):
    """The CPU takes INT8 wherever it is measured faster; TensorRT's INT8 must pass the gate on the
    validation split (this chain has no tuning split of its own)."""

    def check(self, teacher: dict, shipped: dict) -> list[str]:
        return check(self.recipe, teacher, shipped)

    def parity_failures(self, parity: dict) -> list[str]:
        return check_parity(self.recipe, parity)

    def accept(self, target: Target, stage: str, path: Path) -> tuple[bool, str]:
        if target is ONNXRUNTIME:
            return True, "no accuracy bound beyond the gate's"
        reasons = check(self.recipe, self.stages.results["teacher"], self.stages.results[stage])
        return not reasons, "; ".join(reasons) or "passes the gate on the validation split"


def calibration_crops(recipe: VehiclesRecipe, d: Data, s_params: ImageParams) -> tuple[np.ndarray, list]:
    """A recorded, seeded draw of training crops for INT8 calibration: (features, their (path, label) items)."""
    rng = np.random.default_rng(recipe.seed)
    items = [d.train_items[i] for i in sorted(rng.permutation(len(d.train_items))[:recipe.data.calibration_images])]
    calib, _, items, _ = vehicles.load_images(items, s_params, progress=False)
    return calib, items


def distil_and_prune(recipe: VehiclesRecipe, teacher: torch.nn.Module, teacher_sha256: str, d: Data,
                     s_params: ImageParams, t_params: ImageParams, stages: Stages, work: Path):
    """(pruned student, teacher cache, KD history, prune log); the unpruned student is scored as "student".

    The distilled student is cached in ``work`` with its lineage record (student, distil and
    augmentation settings, seed; teacher file, training crops): re-running with other pruning or
    quantisation settings starts from it instead of distilling again.
    """
    torch.manual_seed(recipe.seed)
    labels = list(d.split.labels)
    student = teachers.build(recipe.student, len(labels))
    fronts = [s_params] if s_params == t_params else [s_params, t_params]
    views = Views(d.images, d.labels, len(labels), fronts, recipe.augment, recipe.seed)
    cache = TeacherCache(teacher)
    kd = recipe.distil
    val_x, val_y, _, _ = vehicles.load_images(d.val_items, s_params, progress=False)

    def curve(epoch: int) -> dict:  # the learning curve for the report; nothing is chosen by it
        return {"val_accuracy": float((predict(student, val_x).argmax(1) == val_y).mean())}

    def distil(epochs: int, lr: float, desc: str, first_view: int) -> list[dict]:
        return train(student, views, Schedule(epochs, lr, kd.weight_decay, kd.batch_size), recipe.seed, desc,
                     teacher=cache, temperature=kd.temperature, alpha=kd.alpha, views_per_image=kd.views_per_image,
                     first_view=first_view, teacher_input=len(fronts) - 1, on_epoch=curve)

    example = torch.zeros(1, *s_params.output_shape)
    config = {"student": recipe.student.model_dump(), "distil": kd.model_dump(), "seed": recipe.seed,
              "threads": recipe.threads, "augment": recipe.augment.model_dump()}
    history = lineage.train_or_reuse(work / "student.pt", "distil", config,
                                     {"teacher": teacher_sha256, "train": d.train_sha256}, student,
                                     lambda: distil(kd.epochs, kd.lr, "distil", 0), companions=(cache,))
    macs, params = prune.count(student, example)
    s_onnx = export_onnx(student, example, work / "student.onnx", {"task": TASK})
    stages.score("student", _scorer(student, labels, s_params.to_dict()), s_onnx, params, macs)

    prune_log, first_view, cfg = [], kd.epochs, recipe.prune
    if cfg.enabled:
        for k, target in enumerate(prune.step_targets(params, cfg.target_params, cfg.steps)):
            info = prune.prune_step(student, example, target, cfg.round_to, cfg.max_layer_ratio,
                                    student.pruning_protected() + list(cfg.protect))
            history += distil(cfg.epochs_per_step, cfg.lr, f"prune{k + 1}", first_view)
            first_view += cfg.epochs_per_step  # fresh views (cached ones once views_per_image is reached)
            prune_log.append({"method": cfg.method, **info, "widths": prune.widths(student)})
        torch.save(student, work / "pruned.pt")  # no reuse: pruning changes the architecture
        lineage.write(work / "pruned.pt", "prune", cfg.model_dump(), {"student": sha256_file(work / "student.pt")},
                      history[-1] if history else {})
    return student, cache, history, prune_log


def _scorer(model: torch.nn.Module, labels: list[str], frontend: dict) -> Scorer:
    return torch_scorer(model, TASK, labels, frontend, 0.0)


def onnx_parity(model: torch.nn.Module, onnx_path: Path, items: list, params: ImageParams) -> dict:
    """Max |logit| difference between PyTorch FP32 and its ONNX export, on real crops."""
    from agent.backends.onnx import OnnxBackend

    x, _, _, _ = vehicles.load_images(items, params, progress=False)
    ref = predict(model, x)
    got = OnnxBackend(onnx_path, threads=1)(x)
    diff, scale = float(np.abs(ref - got).max()), float(np.abs(ref).max())
    # "clips": the key gate.check_parity reports (here, crops)
    return {"clips": len(x), "max_abs_logit_diff": diff, "max_abs_logit": scale, "relative": diff / max(scale, 1e-12)}
