"""The gate's shared checks: the shipped model against the teacher, the budget, and its ONNX export.

A task adds its own checks (compute per input, an accuracy floor, baselines) in its ``Tail.check``.
"""

from __future__ import annotations


class GateFailed(RuntimeError):
    """The chain ran, but its result must not ship; the message lists every reason."""


def accuracy_and_params(recipe, teacher: dict, shipped: dict) -> list[str]:
    """Points lost against the teacher (``gate.max_drop``), then ``budget.max_params``. Accuracy in points."""
    failures = []
    drop = 100 * (teacher["accuracy"] - shipped["accuracy"])
    if drop > recipe.gate.max_drop:
        failures.append(f"accuracy {100 * shipped['accuracy']:.2f} % is {drop:.2f} points below the teacher's "
                        f"{100 * teacher['accuracy']:.2f} % (gate.max_drop {recipe.gate.max_drop})")
    return failures + params_within_budget(recipe, shipped)


def params_within_budget(recipe, shipped: dict) -> list[str]:
    if shipped["params"] > recipe.budget.max_params:
        return [f"{shipped['params']} parameters > budget.max_params {recipe.budget.max_params}"]
    return []


def check_parity(recipe, parity: dict) -> list[str]:
    """The ONNX export must compute what the PyTorch model computes, on real inputs."""
    if parity["max_abs_logit_diff"] <= recipe.gate.max_onnx_logit_diff:
        return []
    return [f"ONNX export differs from PyTorch by {parity['max_abs_logit_diff']:.2e} in a logit on "
            f"{parity['clips']} real clips (gate.max_onnx_logit_diff {recipe.gate.max_onnx_logit_diff:.0e})"]


def raise_if_failed(failures: list[str]) -> None:
    if failures:
        raise GateFailed("the compressed model did not pass the gate:\n  " + "\n  ".join(failures))
