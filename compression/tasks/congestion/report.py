"""The congestion artefact: model.onnx, report.json, plots and manifest.json (the contract and the lineage)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.features.detector import CONGESTED

from compression.chain import artefacts
from compression.manifest import sha256_file, sha256_json
from compression.chain.plots import _pyplot, plot_confusion
from compression.tasks.congestion.warning import plot_warning_curves

LICENCE = "Los-loop speeds (T-GCN release, a subset of METR-LA): licence not stated by the source; research and testing"


def write_artefacts(tail, outcome, *, recipe_path, out: Path, ds, baselines: dict, warnings: dict, targets: dict,
                    parity: dict, history: list, calibration: np.ndarray, teacher_path: Path, seconds: float) -> dict:
    """The shared shipped folder (compression.chain.artefacts) with the baselines, the warnings and the
    evaluation set beside the stages."""
    recipe = tail.recipe
    split = ds.split.to_dict()
    evaluation = {**ds.eval.describe(), "eval_days": recipe.data.eval_days, "split_seed": split["seed"],
                  "split_sha256": split["sha256"], "val_fraction": split["val_fraction"],
                  "train_detectors": split["train"], "val_detectors": split["val"]}
    calib_ids = [[int(ds.train.det[i]), int(ds.train.t[i])] for i in calibration]  # (column, row) of each window

    def plots(results: dict, shipped: str) -> list[Path]:
        s = results[shipped]
        return [plot_confusion(s["confusion"], tail.contract["labels"], out / "confusion.png",
                               f"{recipe.name} ({shipped}), held-out detectors: macro-F1 {s['macro_f1']:.3f}"),
                plot_vs_baselines({"shipped": s, "teacher": results["teacher"], **baselines},
                                  out / "metrics_vs_baselines.png", f"{recipe.name}: held-out detectors, last "
                                                                     f"{recipe.data.eval_days} day(s)"),
                plot_example(ds, tail.stages.results[shipped], out / "forecast_example.png"),
                plot_warning_curves(warnings, out / "warning_curves.png",
                                    f"{recipe.name}: congestion warnings on the held-out detectors")]

    return artefacts.write_artefacts(
        tail, outcome, out, parity=parity, history=history, seconds=seconds, licence=LICENCE, plots=plots,
        inputs={"speed_file": ds.speed_file.name, "speed_file_sha256": sha256_file(ds.speed_file),
                "teacher": teacher_path.name, "teacher_sha256": sha256_file(teacher_path),
                "recipe_file": Path(recipe_path).name if recipe_path else None},
        data_lists={"train_detectors": sha256_json(split["train"]), "val_detectors": sha256_json(split["val"]),
                    "calibration_windows": sha256_json(calib_ids)},
        report_extra={"issue_targets": targets, "baselines": baselines, "warnings": warnings,
                      "evaluation": evaluation,
                      "calibration_windows": {"n": len(calib_ids), "sha256": sha256_json(calib_ids)},
                      "data": {"file": ds.speed_file.name, "sha256": sha256_file(ds.speed_file),
                               "training_windows": len(ds.train), "training_rows_before": ds.eval_start}},
        manifest_extra={"window_seconds": float(ds.eval.params.history_steps * ds.eval.params.step_s),
                        "evaluation": evaluation,
                        "warning": warnings["operating_point"],  # the agent's congestion rule warns at this point
                        "baselines": {k: _headline(v) for k, v in baselines.items()}},
        metrics=_headline)


def _headline(m: dict) -> dict:
    return {"macro_f1": m["macro_f1"], "congested_recall": m["congested"]["recall"],
            "congested_precision": m["congested"]["precision"],
            "rmse_mph": m["speed"]["rmse_mph"] if m["speed"] else None,
            "mae_mph": m["speed"]["mae_mph"] if m["speed"] else None,
            "params": m.get("params"), "latency": m.get("latency")}


def plot_vs_baselines(entries: dict[str, dict], path: Path, title: str) -> Path:
    """Grouped bars: the states (macro-F1, congested recall / precision, onsets caught in advance),
    speed errors, and false alarms per detector-day, for the models and both baselines."""
    plt = _pyplot()
    names = list(entries)
    panels = [
        ("states and warnings", ["macro-F1", "congested\nrecall", "congested\nprecision", "onsets caught\nin advance"],
         lambda m: [m["macro_f1"], m["congested"]["recall"], m["congested"]["precision"],
                    m["warnings"]["caught_in_advance_fraction"]]),
        ("speed in 15 min (mph)", ["RMSE", "MAE"],
         lambda m: [m["speed"]["rmse_mph"], m["speed"]["mae_mph"]] if m["speed"] else [np.nan, np.nan]),
        ("false alarms", ["per\ndetector-day"], lambda m: [m["warnings"]["false_alarms_per_detector_day"]]),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), gridspec_kw={"width_ratios": [4, 2, 1.2]})
    width = 0.8 / len(names)
    for ax, (label, ticks, get) in zip(axes, panels):
        for k, name in enumerate(names):
            vals = get(entries[name])
            xs = np.arange(len(ticks)) + (k - (len(names) - 1) / 2) * width
            bars = ax.bar(xs, vals, width, label=name)
            ax.bar_label(bars, fmt="%.2f", fontsize=6, rotation=90, padding=2)
        ax.set_xticks(range(len(ticks)), ticks, fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.margins(y=0.15)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_example(ds, shipped: dict, path: Path) -> Path:
    """The held-out detector-day with the most congestion: true speed, the model's 15-min forecast,
    persistence, the historical average, and where the model forecast congestion."""
    plt = _pyplot()
    es, p = ds.eval, ds.eval.params
    w = es.windows
    target = w.t + p.horizon_steps
    day = target // p.steps_per_day
    keys = w.det * 100_000 + day
    uniq, counts = np.unique(keys[w.y_state == CONGESTED], return_counts=True)
    key = uniq[counts.argmax()] if len(uniq) else keys[0]
    sel = keys == key
    hours = (target[sel] % p.steps_per_day) * p.step_s / 3600
    fig, ax = plt.subplots(figsize=(10, 3.6))
    ax.plot(hours, w.y_speed[sel], color="black", lw=1.4, label="measured")
    ax.plot(hours, shipped["_speed"][sel], color="tab:blue", lw=1, label="model, 15 min ahead")
    ax.plot(hours, es.baselines["persistence"][1][sel], color="tab:orange", lw=0.8, alpha=0.8, label="persistence")
    ax.plot(hours, es.baselines["historical_average"][1][sel], color="tab:green", lw=0.8, alpha=0.8,
            label="historical average")
    said = shipped["_logits"][sel].argmax(1) == CONGESTED
    ax.fill_between(hours, 0, 1, where=said, transform=ax.get_xaxis_transform(), color="tab:red", alpha=0.12,
                    label="model forecasts congested")
    for level in (p.congested_mph, p.free_mph):
        ax.axhline(level, color="grey", lw=0.6, ls="--")
    det = ds.table.ids[int(key // 100_000)]
    ax.set_title(f"held-out detector {det}, weekday {int(ds.table.weekday[int(day[sel][0]) * p.steps_per_day])} "
                 f"(Monday = 0)", fontsize=10)
    ax.set_xlabel("hour of the day (target time)")
    ax.set_ylabel("speed (mph)")
    ax.legend(fontsize=7, ncol=5, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
