"""What every training loop here shares: the learning-rate schedule (linear warm-up, then cosine to zero),
the optimiser step and the weight average."""

from __future__ import annotations

import math

import torch


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Factor on the peak learning rate at ``step`` (0-based) of ``total``, the first ``warmup`` steps rising."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def optimise(opt, loss, losses: list, bar=None) -> None:
    """One optimiser step on ``loss``; its value kept in ``losses`` and shown on the progress ``bar``."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    losses.append(loss.item())
    if bar is not None:
        bar.set_postfix(loss=f"{losses[-1]:.3f}")


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """One step of the exponential moving average of ``model``'s weights in ``ema`` (same architecture):
    floating-point parameters and buffers move by ``1 - decay`` towards the model's; counters are copied."""
    with torch.no_grad():
        for e, m in zip(ema.state_dict().values(), model.state_dict().values()):
            if e.dtype.is_floating_point:
                e.mul_(decay).add_(m, alpha=1 - decay)
            else:
                e.copy_(m)
