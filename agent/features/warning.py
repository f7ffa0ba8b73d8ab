"""When a congestion forecast becomes a warning: the operating point, one definition for the
training chain, ``roadside eval`` and the pole.

The model gives P(congested 15 min ahead). A warning is raised when that probability reaches the
operating point's ``threshold``, or, with ``congested_now``, while the detector already reads
congested (the jam is here, whatever the forecast says), and it ends when the score falls below
``release`` (hysteresis: a forecast hovering around the threshold is one warning, not several).
The point is chosen by the compression chain on a tuning split (never on the held-out detectors)
and travels in the artefact's manifest; the agent's congestion rule uses it as the congested
class's ``threshold`` and ``release``, and ``warning_states`` runs that same rule over recorded
windows, so the chain and ``roadside eval`` measure the warnings the pole sends.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class WarningPoint:
    threshold: float = 0.5  # P(congested at the horizon) at or above which the pole warns
    congested_now: bool = False  # also warn while the detector's latest step is congested
    release: float | None = None  # the score under which a warning ends; None (older artefacts): the threshold

    def __post_init__(self):
        if not 0.0 < float(self.threshold) <= 1.0:
            raise ValueError(f"warning threshold {self.threshold!r} must be in (0, 1]")
        if self.release is not None and not 0.0 <= float(self.release) <= float(self.threshold):
            raise ValueError(f"warning release {self.release!r} must be in [0, threshold {self.threshold}]")

    @property
    def release_at(self) -> float:
        return float(self.threshold if self.release is None else self.release)

    @classmethod
    def from_dict(cls, d: dict) -> "WarningPoint":
        unknown = set(d) - {"threshold", "congested_now", "release"}
        if unknown:
            raise ValueError(f"warning point: unknown key(s) {sorted(unknown)}")
        release = d.get("release")
        return cls(float(d.get("threshold", 0.5)), bool(d.get("congested_now", False)),
                   None if release is None else float(release))

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["release"] is None:
            del d["release"]  # the manifests of artefacts from before hysteresis, as they were
        return d


def warning_score(p_congested, speed_now, point: WarningPoint, congested_mph: float) -> np.ndarray:
    """The score the threshold applies to: P(congested at the horizon), raised to 1 where the detector
    reads congested now and the point says so. A missing speed (NaN, <= 0) is not congested."""
    p = np.asarray(p_congested, np.float64)
    if not point.congested_now:
        return p
    s = np.asarray(speed_now, np.float64)
    now = np.isfinite(s) & (s > 0) & (s < congested_mph)
    return np.where(now, 1.0, p)


def warning_states(score, det, t, point: WarningPoint) -> np.ndarray:
    """Whether the pole warns at each window: the congestion rule's own state machine (``agent.rules.Rule``
    with the point's threshold and release, no smoothing, no minimum duration) over ``score``, run per
    detector (``det``) in the order of its steps (``t``); a gap in a detector's steps restarts it, as a
    gap in the stream does on the pole."""
    from ..config.tasks import ClassRule, RuleConfig
    from ..rules import Rule

    score, det, t = np.asarray(score, np.float64), np.asarray(det), np.asarray(t)
    cfg = RuleConfig(smooth_windows=1, min_duration_s=0.0, cooldown_s=0.0,
                     classes={"congested": ClassRule(threshold=point.threshold, release=point.release_at)})
    on = np.zeros(len(score), bool)
    rule, last = None, (None, None)
    for i in np.lexsort((t, det)):
        if rule is None or det[i] != last[0] or t[i] != last[1] + 1:
            rule = Rule(cfg, ("other", "congested"))
        rule.update(np.array([1.0 - score[i], score[i]]), 0, 0)
        on[i], last = rule.active("congested"), (det[i], t[i])
    return on
