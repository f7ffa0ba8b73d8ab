"""The congestion chain's verdicts: the gate (must hold to ship), the issue's targets (reported), latency."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.backends.onnx import OnnxBackend
from agent.features.detector import DetectorParams, window_features

from compression.chain.gate import params_within_budget
from compression.latency import _median_ms as median_ms
from compression.tasks.congestion.recipe import CongestionRecipe


def gate_failures(recipe: CongestionRecipe, teacher: dict, shipped: dict, persistence: dict) -> list[str]:
    """Reasons the shipped model must not ship (empty when it passes), all on the held-out windows."""
    g, out = recipe.gate, []
    gain = shipped["macro_f1"] - persistence["macro_f1"]
    if gain < g.min_f1_gain:
        out.append(f"macro-F1 {shipped['macro_f1']:.4f} is {gain:+.4f} over persistence's "
                   f"{persistence['macro_f1']:.4f} (gate.min_f1_gain {g.min_f1_gain})")
    if shipped["speed"] is None:
        out.append("the model has no speed output")
    else:
        ratio = shipped["speed"]["rmse_mph"] / persistence["speed"]["rmse_mph"]
        if ratio > g.max_rmse_ratio:
            out.append(f"speed RMSE {shipped['speed']['rmse_mph']:.3f} mph is {ratio:.3f} x persistence's "
                       f"{persistence['speed']['rmse_mph']:.3f} (gate.max_rmse_ratio {g.max_rmse_ratio})")
    drop = teacher["macro_f1"] - shipped["macro_f1"]
    if drop > g.max_f1_drop:
        out.append(f"macro-F1 {shipped['macro_f1']:.4f} is {drop:.4f} below the teacher's {teacher['macro_f1']:.4f} "
                   f"(gate.max_f1_drop {g.max_f1_drop})")
    return out + params_within_budget(recipe, shipped)


def parity_failures(recipe: CongestionRecipe, parity: dict) -> list[str]:
    """The ONNX export must compute the PyTorch model's states and speeds."""
    worst = max(parity["max_abs_logit_diff"], parity["max_abs_speed_diff_mph"])
    if worst <= recipe.gate.max_onnx_diff:
        return []
    return [f"ONNX export differs from PyTorch by {worst:.2e} on {parity['windows']} held-out windows "
            f"(gate.max_onnx_diff {recipe.gate.max_onnx_diff:.0e})"]


def target_results(recipe: CongestionRecipe, shipped: dict, persistence: dict) -> dict:
    """The issue's targets for unseen detectors, each with its threshold, the value and whether it is met."""
    t = recipe.targets
    f1_needed = persistence["macro_f1"] + t.f1_gain
    rmse, p_rmse = shipped["speed"]["rmse_mph"] if shipped["speed"] else float("inf"), persistence["speed"]["rmse_mph"]
    return {
        "macro_f1": {"value": shipped["macro_f1"], "threshold": f1_needed, "met": shipped["macro_f1"] >= f1_needed,
                     "rule": f"persistence's {persistence['macro_f1']:.4f} + {t.f1_gain}"},
        "rmse_vs_persistence": {"value": rmse, "threshold": t.rmse_ratio * p_rmse, "met": rmse <= t.rmse_ratio * p_rmse,
                                "rule": f"{t.rmse_ratio} x persistence's {p_rmse:.3f} mph"},
        "rmse_mph": {"value": rmse, "threshold": t.rmse_mph, "met": rmse <= t.rmse_mph, "rule": "absolute, mph"},
    }


def per_window_latency(models: dict[str, Path], params: DetectorParams, history: np.ndarray,
                       rounds: int = 5, repeats: int = 200) -> dict[str, dict[str, float]]:
    """ms per forecast on this CPU, one thread: the front-end vector from a history, and the model.

    Models are timed in interleaved rounds (median of the rounds' medians), so a neighbour's
    load on the shared CPU hits all of them alike.
    """
    backends = {k: OnnxBackend(p, threads=1) for k, p in models.items()}

    # a device's usual speeds are one cached table per day; per window only the lookup is paid
    usual = np.full((2, params.steps_per_day), 60.0) if params.uses_profile else None

    def features() -> np.ndarray:
        return window_features(history, 100, 2, params, usual)[None]

    x = features()
    fe = [median_ms(features, repeats) for _ in range(rounds)]
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for k, b in backends.items():
            times[k].append(median_ms(lambda: b(x), repeats))
    front = float(np.median(fe))
    return {k: {"frontend_ms": front, "model_ms": float(np.median(v)), "total_ms": front + float(np.median(v))}
            for k, v in times.items()}
