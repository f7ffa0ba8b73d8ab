"""The one resampler used everywhere (training, evaluation, device).

Polyphase FIR (scipy.signal.resample_poly with its default Kaiser window): it is
what the mn04 golden vectors were made with (16 -> 32 kHz is ``up=2, down=1``),
it is exact for rational ratios, and it works on short chunks without the
wrap-around artefacts of FFT resampling.
"""

from __future__ import annotations

from math import gcd

import numpy as np
from scipy.signal import resample_poly


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample ``x`` (last axis is time) from ``sr_in`` to ``sr_out`` Hz, as float32."""
    if sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"sample rates must be positive, got sr_in={sr_in}, sr_out={sr_out}")
    x = np.asarray(x, dtype=np.float32)
    if sr_in == sr_out:
        return x
    g = gcd(int(sr_in), int(sr_out))
    return resample_poly(x, int(sr_out) // g, int(sr_in) // g, axis=-1).astype(np.float32)
