"""The learning-rate schedule every training loop here uses: linear warm-up, then cosine to zero."""

from __future__ import annotations

import math


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
