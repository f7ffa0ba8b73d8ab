"""``roadside compress`` for congestion: GRU teacher -> distilled MLP student -> INT8 -> ONNX, gated.

Data: one speed table (los_speed.csv). Whole detectors are held out (seeded, recorded) and
the last ``data.eval_days`` days are evaluation time: the models train on the other
detectors' earlier days only, and every number in the report is measured on the held-out
detectors' evaluation days, beside persistence and the historical average on the same
windows (``compression.tasks.congestion.evaluate``).

Stages: the teacher is pretrained to forecast speeds 1..K steps ahead on every training
detector, then fine-tuned for the states and the speed at the horizon; the student learns
the teacher's states and speeds (and the truth); then the shared tail (``compression.chain``):
INT8 (onnxruntime static QDQ) ships only when it is measured faster than FP32 on this CPU and
passes the gate (``CongestionTail``). The teacher is reused through its lineage record.
Writes to ``out``: model.onnx (outputs ``logits`` then ``speed``), manifest.json,
report.json and plots. The teacher checkpoint and ONNX stages go to ``work``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from agent.features.detector import DetectorParams, forget_profile, profile_columns

from compression.chain import lineage
from compression.chain.gate import raise_if_failed
from compression.chain.stages import Stages
from compression.chain.tail import Tail, finish
from compression.chain.targets import ONNXRUNTIME, Target
from compression.datasets.datadir import REPO_ROOT as REPO
from compression.export import export_onnx
from compression.manifest import sha256_file
from compression.tasks.congestion import traffic
from compression.tasks.congestion import train as train
from compression.tasks.congestion.evaluate import (EvalSet, Windows, bootstrap_vs_persistence, build_eval_set,
                                                   onnx_predict, predict_all, training_windows)
from compression.tasks.congestion.recipe import CongestionRecipe
from compression.tasks.congestion.report import write_artefacts
from compression.tasks.congestion.stages import gate_failures, parity_failures, per_window_latency, target_results
from compression.tasks.congestion.student import DetectorMLP, n_params
from compression.tasks.congestion.teacher import SpeedGRU, load_checkpoint, save_checkpoint
from compression.tasks.congestion.warning import warning_report

log = logging.getLogger(__name__)
OUTPUTS = ("logits", "speed")


@dataclass(frozen=True)
class Data:
    speed_file: Path
    table: traffic.SpeedTable
    split: traffic.DetectorSplit
    eval_start: int
    train: Windows
    eval: EvalSet


def load_data(recipe: CongestionRecipe, params: DetectorParams, data) -> Data:
    speed_file = traffic.find_speed_file(data)
    table = traffic.load_speeds(speed_file)
    return split_data(recipe, params, speed_file, table, outer_split(recipe, table))


def outer_split(recipe: CongestionRecipe, table: traffic.SpeedTable) -> traffic.DetectorSplit:
    """The held-out detectors, or on a tuning split the share of the training detectors that stands in for them."""
    ids, split = held_out_split(recipe, table)
    if recipe.data.time_split_only:
        split = traffic.DetectorSplit(train=ids, val=ids, seed=recipe.seed, val_fraction=0.0)
        log.warning("time split only: every detector is trained on and scored; these are not unseen-detector figures")
    elif recipe.data.tuning_split:
        split = traffic.split_detectors(split.train, recipe.data.val_fraction, recipe.seed)
        log.info("tuning split: the %d held-out detectors are not loaded; %d of the training detectors are held out",
                 len(ids) - len(split.train) - len(split.val), len(split.val))
    return split


def held_out_split(recipe: CongestionRecipe,
                   table: traffic.SpeedTable) -> tuple[tuple[str, ...], traffic.DetectorSplit]:
    """The detectors in use and the seeded split of the whole ones held out from them."""
    ids = tuple(table.ids[:recipe.data.max_detectors] if recipe.data.max_detectors else table.ids)
    return ids, traffic.split_detectors(ids, recipe.data.val_fraction, recipe.seed)


def split_data(recipe: CongestionRecipe, params: DetectorParams, speed_file: Path, table: traffic.SpeedTable,
               split: traffic.DetectorSplit) -> Data:
    """Training windows of ``split.train`` before the evaluation days, evaluation windows of ``split.val``."""
    es = build_eval_set(table, split.val, params, recipe.data.eval_days)
    w = training_windows(table, split.train, params, es.eval_start)
    if len(w) == 0:
        raise ValueError(f"{speed_file}: no training window before the last {recipe.data.eval_days} day(s)")
    log.info("%d training windows (%d detectors, rows < %d); %d evaluation windows (%d held-out detectors)",
             len(w), len(split.train), es.eval_start, len(es.windows), len(es.detectors))
    return Data(speed_file, table, split, es.eval_start, w, es)


def run_congestion(recipe: CongestionRecipe, recipe_path: Path | None = None, data=None, out: Path | None = None,
                   work: Path | None = None) -> dict:
    """The chain; returns the report, raises GateFailed (after writing it) when the result must not ship."""
    if recipe.data.tuning_folds > 1:  # a tuning run that chooses the warning point and ships nothing
        from compression.tasks.congestion.crossfit import run_crossfit

        return run_crossfit(recipe, recipe_path, data, out, work)
    t_start = time.time()
    torch.set_num_threads(recipe.threads)
    params = DetectorParams.from_dict(recipe.frontend)
    out = Path(out or REPO / "agent" / "models" / recipe.task)
    work = Path(work or REPO / "runs" / recipe.name)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    ds = load_data(recipe, params, data)
    es = ds.eval
    baselines = {name: es.score(*pred) for name, pred in es.baselines.items()}
    history_now = es.windows.X[0, :params.history_steps] * params.speed_scale  # one real history for latency
    contract = model_contract(recipe, params)

    stages, history, teacher_path, parity = float_stages(recipe, params, ds, contract, history_now, work)
    calib = np.sort(np.random.default_rng(recipe.seed).permutation(len(ds.train))[:recipe.data.calibration_windows])
    tail = CongestionTail(recipe, stages, contract, work, ds.train.X[calib], ds.eval, baselines["persistence"],
                          params, history_now)
    outcome = finish(tail, work / "student_fp32.onnx", parity)  # INT8 where it pays, the gate
    shipped = stages.results[outcome.shipped["onnxruntime"]]
    targets = targets_with_bootstrap(recipe, es, shipped, baselines)
    warnings = warning_report(recipe, es, shipped["_logits"])
    log.info("warnings at P >= %g%s: %s", recipe.warning.threshold, " or congested now" if recipe.warning.congested_now
             else "", {k: round(v, 3) for k, v in warnings["at_operating_point"].items() if isinstance(v, float)})
    report = write_artefacts(tail, outcome, recipe_path=recipe_path, out=out, ds=ds, baselines=baselines,
                             warnings=warnings, targets=targets, parity=parity, history=history,
                             calibration=calib if recipe.quantise.enabled else calib[:0], teacher_path=teacher_path,
                             seconds=time.time() - t_start)
    raise_if_failed(outcome.failures)
    return report


def model_contract(recipe: CongestionRecipe, params: DetectorParams) -> dict:
    return {"task": recipe.task, "labels": ["free", "slowed", "congested"], "frontend": params.to_dict(),
            "name": recipe.name, "version": recipe.version, "outputs": list(OUTPUTS)}


class CongestionTail(Tail):
    """INT8 (CPU only: TensorRT builds from model.onnx) where it is measured faster, interleaved with FP32,
    and passes the gate; every stage is scored on the held-out detectors beside persistence."""

    fp32_stage = "student"
    targets = (ONNXRUNTIME,)

    def __init__(self, recipe, stages: Stages, contract: dict, work: Path, calibration: np.ndarray, es: EvalSet,
                 persistence: dict, params: DetectorParams, history_now: np.ndarray):
        super().__init__(recipe, stages, contract, work, calibration)
        self.es, self.persistence, self.params, self.history_now = es, persistence, params, history_now

    def int8_stage(self, target: Target) -> str:
        return f"{self.fp32_stage}_int8"

    def score_int8(self, name: str, path: Path) -> dict:
        entry = self.stages.add(name, _score(self.es, onnx_predict(_session(path)),
                                             self.stages.results[self.fp32_stage]["params"], path, self.params,
                                             self.history_now))
        entry["state_agreement_with_fp32"] = float(
            (entry["_logits"].argmax(1) == self.stages.results[self.fp32_stage]["_logits"].argmax(1)).mean())
        return entry

    def speeds(self, fp32: Path, int8_stage: str, int8: Path) -> tuple[float, float, str]:
        lat = per_window_latency({self.fp32_stage: fp32, int8_stage: int8}, self.params, self.history_now)
        for name, v in lat.items():
            self.stages.results[name]["latency"] = v
        return lat[self.fp32_stage]["model_ms"], lat[int8_stage]["model_ms"], self.stages.unit

    def check(self, teacher: dict, shipped: dict) -> list[str]:
        return gate_failures(self.recipe, teacher, shipped, self.persistence)

    def parity_failures(self, parity: dict) -> list[str]:
        return parity_failures(self.recipe, parity)

    def accept(self, target: Target, stage: str, path: Path) -> tuple[bool, str]:
        reasons = self.check(self.stages.results["teacher"], self.stages.results[stage])
        return not reasons, "; ".join(reasons) or "passes the gate"


def float_stages(recipe: CongestionRecipe, params: DetectorParams, ds: Data, contract: dict, history_now,
                 work: Path) -> tuple[Stages, list, Path, dict]:
    """Teacher and student in FP32, exported and scored: (stages, training history, teacher checkpoint, parity)."""
    es = ds.eval
    tensors = train.Tensors(ds.train, train.future_speeds(ds.table, ds.train, recipe.teacher.forecast_steps,
                                                          ds.eval_start),
                            profile_columns(params), recipe.data.profile_dropout, recipe.seed)
    example = torch.from_numpy(es.windows.X[:1])
    stages = Stages("per window")

    # 1. teacher: pretrained on speed forecasting, fine-tuned for the states
    teacher, teacher_path, history, t_offsets = teacher_stage(recipe, params, ds, tensors, work)
    teacher_onnx = export_onnx(teacher, example, work / "teacher.onnx", contract, output_names=OUTPUTS)
    stages.add("teacher", _score(es, train.torch_predict(teacher), n_params(teacher), teacher_onnx, params,
                                 history_now, offsets=t_offsets))

    # 2. student, distilled from the teacher's cached outputs on the training windows
    student, h, s_offsets = student_stage(recipe, params, teacher, tensors)
    history += h
    torch.save(student.state_dict(), work / "student.pt")
    fp32 = export_onnx(student, example, work / "student_fp32.onnx", contract, output_names=OUTPUTS)
    parity = onnx_parity(student, fp32, es.windows.X[:recipe.data.parity_windows])
    stages.add("student", _score(es, onnx_predict(_session(fp32)), n_params(student), fp32, params, history_now,
                                 offsets=s_offsets))
    return stages, history, teacher_path, parity


def targets_with_bootstrap(recipe: CongestionRecipe, es: EvalSet, shipped: dict, baselines: dict) -> dict:
    """The recipe's targets for the shipped stage, with how sure the gains are: the 32-odd held-out detectors
    are a small sample, so each gain carries its detector bootstrap."""
    targets = target_results(recipe, shipped, baselines["persistence"])
    boots = bootstrap_vs_persistence(es, shipped["_logits"].argmax(1), shipped["_speed"], recipe.seed, recipe.targets)
    targets["macro_f1"]["detector_bootstrap"] = boots["macro_f1_gain_over_persistence"]
    if "speed_vs_persistence" in boots:
        boot = boots["speed_vs_persistence"]
        common = {k: boot[k] for k in ("detectors", "resamples", "seed")}
        targets["rmse_mph"]["detector_bootstrap"] = {**common, **{k: v for k, v in boot.items() if "rmse" in k}}
        targets["rmse_vs_persistence"]["detector_bootstrap"] = {**common, **{k: v for k, v in boot.items()
                                                                            if "ratio" in k}}
    return targets


def teacher_stage(recipe: CongestionRecipe, params: DetectorParams, ds: Data, d: train.Tensors, work: Path):
    """Train the teacher, or reuse ``teacher.checkpoint`` when it was trained on exactly this data."""
    cfg = recipe.teacher
    trained_on = {"frontend": params.to_dict(), "split_sha256": ds.split.to_dict()["sha256"],
                  "eval_start_row": ds.eval_start, "speed_file_sha256": sha256_file(ds.speed_file),
                  "hidden": cfg.hidden, "layers": cfg.layers, "forecast_steps": cfg.forecast_steps}
    if cfg.checkpoint:
        path = Path(cfg.checkpoint) if Path(cfg.checkpoint).is_absolute() else REPO / cfg.checkpoint
        model, meta = load_checkpoint(path)
        wrong = sorted(k for k, v in trained_on.items() if meta.get(k) != v)
        if wrong:
            raise ValueError(f"teacher.checkpoint {path}: trained with other {wrong} than this recipe and data")
        return model, path, list(meta.get("history", [])), np.asarray(meta.get("offsets", [0, 0, 0]), np.float32)
    path = work / "teacher.pt"
    settings = {"teacher": cfg.model_dump(exclude={"checkpoint"}), "loss": recipe.loss.model_dump(),
                "seed": recipe.seed, "threads": recipe.threads, "profile_dropout": recipe.data.profile_dropout}
    if lineage.reusable(path, "teacher", settings, trained_on):  # trained here before on exactly this data
        model, meta = load_checkpoint(path)
        d.load_state_dict(meta["data_state"])
        return model, path, list(meta["history"]), np.asarray(meta["offsets"], np.float32)
    t_start = time.time()
    torch.manual_seed(recipe.seed)
    model = SpeedGRU(params, cfg.hidden, cfg.layers, cfg.forecast_steps)
    w = recipe.loss.speed_weight
    history = train.fit(model, train.pretrain_loss, d, cfg.pretrain, w, recipe.seed, "teacher-pretrain")
    history += train.fit(model, train.finetune_loss, d, cfg.finetune, w, recipe.seed, "teacher-finetune")
    offsets = _tune(model, recipe, ds.train.X, ds.train.y_state)
    save_checkpoint(model, path, {**trained_on, "offsets": offsets.tolist(), "history": history,
                                  "data_state": d.state_dict()})
    lineage.write(path, "teacher", settings, trained_on, history[-1] if history else {}, time.time() - t_start)
    return model, path, history, offsets


def student_stage(recipe: CongestionRecipe, params: DetectorParams, teacher, d: train.Tensors):
    def soft(x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        logits, speed = predict_all(train.torch_predict(teacher), x)
        return torch.from_numpy(logits), torch.from_numpy(speed)

    without = soft(forget_profile(d.x.numpy(), params)) if d.profile_dropout > 0 else None
    torch.manual_seed(recipe.seed)
    student = DetectorMLP(params, recipe.student.hidden)
    loss = train.distil_loss(recipe.distil, soft(d.x.numpy()), without)
    history = train.fit(student, loss, d, recipe.distil, recipe.loss.speed_weight, recipe.seed, "distil")
    return student, history, _tune(student, recipe, d.x.numpy(), d.y_state.numpy())


def _tune(model, recipe: CongestionRecipe, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Macro-F1 offsets of the logits from the training windows, written into the model's head."""
    if not recipe.loss.tune_bias:
        return np.zeros(3, np.float32)
    logits, _ = predict_all(train.torch_predict(model), x)
    offsets, f1 = train.tune_offsets(logits, y)
    log.info("%s: logit offsets %s (training macro-F1 %.4f)", type(model).__name__, offsets.tolist(), f1)
    model.shift_logits(torch.from_numpy(offsets))
    return offsets


def _session(path: Path):
    from agent.backends.onnx import OnnxBackend

    return OnnxBackend(path, threads=1).session


def _score(es: EvalSet, predict, params_count: int, onnx_path: Path, params: DetectorParams, history_now,
           offsets=None) -> dict:
    logits, speed = predict_all(predict, es.windows.X)
    entry = es.score(logits.argmax(1), speed)
    entry.update(params=params_count, onnx_bytes=onnx_path.stat().st_size,
                 latency=per_window_latency({"m": onnx_path}, params, history_now)["m"])
    if offsets is not None:
        entry["logit_offsets"] = [float(v) for v in offsets]
    if params.uses_profile:
        entry["without_profile"] = es.score_without_profile(predict)
    entry["_logits"], entry["_speed"] = logits, speed  # for agreement and plots; not in the JSON
    log.info("%s: macro-F1 %.4f, congested recall %.3f precision %.3f, RMSE %.3f mph, %d params", onnx_path.stem,
             entry["macro_f1"], entry["congested"]["recall"], entry["congested"]["precision"],
             entry["speed"]["rmse_mph"], params_count)
    return entry


def onnx_parity(model, onnx_path: Path, x: np.ndarray) -> dict:
    """Max |difference| of logits and speeds between PyTorch FP32 and its ONNX export on held-out windows."""
    ref_logits, ref_speed = train.torch_predict(model)(x)
    got_logits, got_speed = onnx_predict(_session(onnx_path))(x)
    return {"windows": len(x), "max_abs_logit_diff": float(np.abs(ref_logits - got_logits).max()),
            "max_abs_speed_diff_mph": float(np.abs(ref_speed - got_speed).max())}
