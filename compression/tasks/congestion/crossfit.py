"""Cross-fitted choice of the congestion warning's operating point (``--set data.tuning_split=true
--set data.tuning_folds=K``).

One tuning split (26 of the 128 training detectors) is a small sample of streets: the point it chose
raised 2-3x its false alarms on the held-out detectors. Cross-fitting uses every training detector
instead. They are cut into K folds (seeded; the lists are in the report); each fold's detectors are
scored by a teacher and student trained by the same recipe on the other folds' detectors; the
warning curve is computed once over all of them pooled, and the recipe's rule
(``warning.min_caught``, the false-alarm bootstrap quantile, the most onsets caught ahead) chooses
the point. The held-out detectors are never loaded, and no model is written: this run only says
which ``warning.threshold`` / ``warning.release`` to put in the recipe.

Writes ``crossfit.json`` and ``crossfit_warning_curves.png`` to ``out``; each fold's teacher goes to
``work/crossfit-fold<k>`` with its lineage record, so a re-run reuses it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from agent.features.detector import DetectorParams
from agent.features.warning import WarningPoint

from compression.datasets.datadir import REPO_ROOT as REPO
from compression.manifest import sha256_file, sha256_json
from compression.tasks.congestion import traffic
from compression.tasks.congestion.chain import float_stages, held_out_split, model_contract, split_data
from compression.tasks.congestion.evaluate import pool_eval_sets
from compression.tasks.congestion.recipe import CongestionRecipe
from compression.tasks.congestion.warning import at_operating_point, plot_warning_curves, warning_report

log = logging.getLogger(__name__)


def fold_splits(ids, folds: int, seed: int) -> list[traffic.DetectorSplit]:
    """K splits of ``ids``: split k holds out fold k (a seeded, near-even share) and trains on the rest."""
    ids = tuple(ids)
    if not 2 <= folds <= len(ids):
        raise ValueError(f"cannot cut {len(ids)} detector(s) into {folds} folds")
    fold_of = np.empty(len(ids), np.int64)
    fold_of[np.random.default_rng(seed).permutation(len(ids))] = np.arange(len(ids)) % folds
    return [traffic.DetectorSplit(train=tuple(i for i, f in zip(ids, fold_of) if f != k),
                                  val=tuple(i for i, f in zip(ids, fold_of) if f == k),
                                  seed=int(seed), val_fraction=round(1.0 / folds, 6))
            for k in range(folds)]


def run_crossfit(recipe: CongestionRecipe, recipe_path: Path | None = None, data=None, out: Path | None = None,
                 work: Path | None = None) -> dict:
    t_start = time.time()
    torch.set_num_threads(recipe.threads)
    params = DetectorParams.from_dict(recipe.frontend)
    out = Path(out or REPO / "runs" / f"{recipe.name}-crossfit")
    work = Path(work or REPO / "runs" / recipe.name)
    out.mkdir(parents=True, exist_ok=True)
    speed_file = traffic.find_speed_file(data)
    table = traffic.load_speeds(speed_file)
    ids, held_out = held_out_split(recipe, table)
    training = held_out.train  # the held-out detectors are never loaded
    log.info("cross-fitting the warning point over %d training detectors in %d folds (%d held-out detectors "
             "not loaded)", len(training), recipe.data.tuning_folds, len(ids) - len(training))

    sets, logits, folds, stages_out = [], [], [], {}
    for k, split in enumerate(fold_splits(training, recipe.data.tuning_folds, recipe.seed)):
        ds = split_data(recipe, params, speed_file, table, split)
        history_now = ds.eval.windows.X[0, :params.history_steps] * params.speed_scale
        fold_work = work / f"crossfit-fold{k}"
        fold_work.mkdir(parents=True, exist_ok=True)
        stages, _, teacher_path, _ = float_stages(recipe, params, ds, model_contract(recipe, params), history_now,
                                                  fold_work)
        student = stages.results["student"]
        sets.append(ds.eval)
        logits.append(student["_logits"])
        stages_out[f"fold{k}_student"] = {key: v for key, v in student.items() if not key.startswith("_")}
        folds.append({"fold": k, "val_detectors": list(split.val), "split_sha256": split.to_dict()["sha256"],
                      "windows": len(ds.eval.windows), "teacher_sha256": sha256_file(teacher_path),
                      "student_macro_f1": student["macro_f1"], "student_rmse_mph": student["speed"]["rmse_mph"]})

    es, pooled = pool_eval_sets(sets), np.concatenate(logits)
    warnings = warning_report(recipe, es, pooled)
    chosen = warnings["chosen_on_this_split"]
    point = WarningPoint(chosen["setting"], recipe.warning.congested_now, chosen["release"])
    for fold, fold_es, fold_logits in zip(folds, sets, logits):  # how much the streets vary at that point
        fold["at_chosen_point"] = at_operating_point(fold_es, fold_logits, point)
    report = {"task": recipe.task, "name": recipe.name, "kind": "warning point, cross-fitted on the training detectors",
              "folds": folds, "detectors": len(es.detectors), "windows": len(es.windows),
              "training_detectors_sha256": sha256_json(list(training)), "speed_file_sha256": sha256_file(speed_file),
              "chosen": {**chosen, "recipe_keys": {"warning.threshold": point.threshold,
                                                   "warning.release": point.release_at}},
              "warnings": warnings, "stages": stages_out, "seconds": round(time.time() - t_start, 1),
              "outcome": f"cross-fitted warning point: threshold {point.threshold:g}, release {point.release_at:g} "
                         f"(meets the bounds: {chosen['meets_bounds']}); no model written, see "
                         f"{out / 'crossfit.json'}"}
    (out / "crossfit.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    plot_warning_curves({**warnings, "at_operating_point": chosen}, out / "crossfit_warning_curves.png",
                        f"{recipe.name}: warnings cross-fitted over {len(es.detectors)} training detectors "
                        f"({recipe.data.tuning_folds} folds)")
    log.info("%s", report["outcome"])
    return report
