"""The learning-rate schedule every training loop here uses: linear warm-up, then cosine to zero."""

from __future__ import annotations

import math


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Factor on the peak learning rate at ``step`` (0-based) of ``total``, the first ``warmup`` steps rising."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
