"""When a congestion forecast becomes a warning: the operating point, one definition for the
training chain, ``roadside eval`` and the pole.

The model gives P(congested 15 min ahead). A warning is raised when that probability reaches the
operating point's ``threshold``, or, with ``congested_now``, while the detector already reads
congested (the jam is here, whatever the forecast says). The threshold is chosen by the
compression chain on a tuning split (never on the held-out detectors) and travels in the
artefact's manifest; the agent's congestion rule uses it as the congested class's threshold.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class WarningPoint:
    threshold: float = 0.5  # P(congested at the horizon) at or above which the pole warns
    congested_now: bool = False  # also warn while the detector's latest step is congested

    def __post_init__(self):
        if not 0.0 < float(self.threshold) <= 1.0:
            raise ValueError(f"warning threshold {self.threshold!r} must be in (0, 1]")

    @classmethod
    def from_dict(cls, d: dict) -> "WarningPoint":
        unknown = set(d) - {"threshold", "congested_now"}
        if unknown:
            raise ValueError(f"warning point: unknown key(s) {sorted(unknown)}")
        return cls(float(d.get("threshold", 0.5)), bool(d.get("congested_now", False)))

    def to_dict(self) -> dict:
        return asdict(self)


def warning_score(p_congested, speed_now, point: WarningPoint, congested_mph: float) -> np.ndarray:
    """The score the threshold applies to: P(congested at the horizon), raised to 1 where the detector
    reads congested now and the point says so. A missing speed (NaN, <= 0) is not congested."""
    p = np.asarray(p_congested, np.float64)
    if not point.congested_now:
        return p
    s = np.asarray(speed_now, np.float64)
    now = np.isfinite(s) & (s > 0) & (s < congested_mph)
    return np.where(now, 1.0, p)
