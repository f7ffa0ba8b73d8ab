"""One gate across the chain: the shipped model against the teacher and the budget."""

from __future__ import annotations

from .recipe import CompressionRecipe


class GateFailed(RuntimeError):
    """The chain ran, but its result must not ship; the message lists every reason."""


def accuracy_and_params(recipe, teacher: dict, shipped: dict) -> list[str]:
    """What every task's gate checks: points lost against the teacher (``gate.max_drop``), then
    ``budget.max_params``. Accuracy in points (0..100)."""
    failures = []
    drop = 100 * (teacher["accuracy"] - shipped["accuracy"])
    if drop > recipe.gate.max_drop:
        failures.append(f"accuracy {100 * shipped['accuracy']:.2f} % is {drop:.2f} points below the teacher's "
                        f"{100 * teacher['accuracy']:.2f} % (gate.max_drop {recipe.gate.max_drop})")
    if shipped["params"] > recipe.budget.max_params:
        failures.append(f"{shipped['params']} parameters > budget.max_params {recipe.budget.max_params}")
    return failures


def check(recipe: CompressionRecipe, teacher: dict, shipped: dict) -> list[str]:
    """Reasons the shipped noise model fails (empty when it passes)."""
    failures = accuracy_and_params(recipe, teacher, shipped)
    if shipped["macs_per_second"] > recipe.budget.max_macs_per_second:
        failures.append(f"{shipped['macs_per_second'] / 1e6:.2f} M MACs per second of audio > "
                        f"budget.max_macs_per_second {recipe.budget.max_macs_per_second / 1e6:.2f} M")
    return failures


def check_parity(recipe: CompressionRecipe, parity: dict) -> list[str]:
    """The ONNX export must compute what the PyTorch model computes, on real clips."""
    if parity["max_abs_logit_diff"] <= recipe.gate.max_onnx_logit_diff:
        return []
    return [f"ONNX export differs from PyTorch by {parity['max_abs_logit_diff']:.2e} in a logit on "
            f"{parity['clips']} real clips (gate.max_onnx_logit_diff {recipe.gate.max_onnx_logit_diff:.0e})"]
