"""Structured channel pruning with torch-pruning, to a parameter target, channels in multiples of 8.

torch-pruning's dependency graph keeps coupled channels together (residual adds,
depthwise convs, the SE gate's multiply), so the pruned network is a smaller dense
network: no masks, real savings in MACs and bytes. The ratio that lands on the target
is found by bisection on copies.

What we learnt on mn04 (fold 2, no fine-tuning yet): global pruning with channel counts
rounded to 8 cuts the 8- and 16-wide residual streams by half or all of their width
and the model never recovers (KD loss stays at ln 10). So a student declares the layers
whose output channels are protected (for mn04: the residual streams), and every other
layer loses the same fraction (L2-magnitude ranking within each layer); KD fine-tuning
after each step does the recovering.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch_pruning as tp
from torch import nn

log = logging.getLogger(__name__)


def count(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(MACs, parameters) of one forward pass on ``example``."""
    was_training = model.training
    model.eval()
    macs, params = tp.utils.count_ops_and_params(model, example)
    model.train(was_training)
    return int(macs), int(params)


def _pruner(model: nn.Module, example: torch.Tensor, ratio: float, round_to: int, max_layer_ratio: float,
            ignored: list[nn.Module]) -> tp.pruner.MetaPruner:
    return tp.pruner.MetaPruner(
        model, example, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=ratio,
        global_pruning=False, round_to=round_to, max_pruning_ratio=max_layer_ratio, ignored_layers=ignored)


def protected_layers(model: nn.Module, names: list[str]) -> list[nn.Module]:
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ValueError(f"protected layers not in the model: {missing}")
    return [modules[n] for n in names]


def prune_once(model: nn.Module, example: torch.Tensor, ratio: float, round_to: int, max_layer_ratio: float,
               ignored: list[nn.Module]) -> nn.Module:
    model.eval()
    _pruner(model, example, ratio, round_to, max_layer_ratio, ignored).step()
    return model


def ratio_for(model: nn.Module, example: torch.Tensor, target_params: int, round_to: int,
              max_layer_ratio: float, protected: list[str]) -> float:
    """A small ratio whose pruned copy has at most ``target_params`` parameters.

    Not a plain bisection over (0, max]: with channels rounded to multiples of 8, torch-pruning
    leaves a layer whole when the ratio would round it below 8 channels, so the size is not
    monotonic in the ratio (a 16-32 CNN keeps 1,706 parameters at 0.5 and all 5,706 at 0.9).
    A coarse scan finds the first ratio that reaches the target, bisection refines below it.
    """
    def params_after(r: float) -> int:
        m = copy.deepcopy(model)
        return count(prune_once(m, example, r, round_to, max_layer_ratio, protected_layers(m, protected)), example)[1]

    grid = [max_layer_ratio * k / 10 for k in range(1, 11)]
    sizes = []
    for r in grid:
        sizes.append(params_after(r))
        if sizes[-1] <= target_params:
            break
    else:
        best = min(range(len(grid)), key=sizes.__getitem__)
        raise ValueError(f"prune.target_params {target_params} is out of reach: the fewest parameters any ratio "
                         f"up to {max_layer_ratio} leaves is {sizes[best]} (at {grid[best]:.2f})")
    hi = grid[len(sizes) - 1]
    lo = grid[len(sizes) - 2] if len(sizes) > 1 else 0.0
    for _ in range(8):
        mid = (lo + hi) / 2
        if params_after(mid) <= target_params:
            hi = mid
        else:
            lo = mid
    return hi


def prune_step(model: nn.Module, example: torch.Tensor, target_params: int, round_to: int,
               max_layer_ratio: float, protected: list[str]) -> dict:
    """``protected``: names of layers whose output channels stay (the classifier's output at least)."""
    before = count(model, example)
    if before[1] <= target_params:
        return {"ratio": 0.0, "macs_before": before[0], "params_before": before[1],
                "macs": before[0], "params": before[1]}
    ratio = ratio_for(model, example, target_params, round_to, max_layer_ratio, protected)
    prune_once(model, example, ratio, round_to, max_layer_ratio, protected_layers(model, protected))
    after = count(model, example)
    log.info("pruned at ratio %.3f: %d -> %d parameters, %.2f -> %.2f M MACs", ratio, before[1], after[1],
             before[0] / 1e6, after[0] / 1e6)
    return {"ratio": ratio, "macs_before": before[0], "params_before": before[1], "macs": after[0], "params": after[1]}


def step_targets(start_params: int, target_params: int, steps: int) -> list[int]:
    """Geometric steps from the start to the target (each removes the same fraction)."""
    if steps <= 1 or start_params <= target_params:
        return [target_params]
    f = (target_params / start_params) ** (1 / steps)
    return [max(target_params, int(start_params * f ** (k + 1))) for k in range(steps - 1)] + [target_params]


def widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every conv: what pruning left, for the report."""
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
