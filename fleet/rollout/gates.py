"""Gates: pure functions from a stage's figures to the bounds they break (no I/O; unit-tested).

Figures per pole come from its latest shadow report for the candidate (cumulative since the
shadow began). Across poles the comparison figures are window-weighted means (``agr``, ``cf``,
``acf``, errors per window); latency is the median over poles of ``p95 candidate / p95 active``
(both measured on the same pole at the same time, so the ratio cancels the hardware; the median
keeps one busy pole from deciding for the fleet).

Gates, in the order they are checked (the first breached is the one recorded):

- ``install``: poles that refused or rolled back the candidate / poles sent it > ``max_install_failures``;
- ``offline``: poles that went offline after the candidate reached them and are still away /
  poles it reached > ``max_offline``;
- ``evidence``: when the stage's time is up, fewer than ``min_reporting`` of its poles asked to
  shadow (and reachable) compared ``min_windows`` windows (a gate that cannot be checked is not passed);
- ``agreement``: 1 - agreement > ``max_disagreement``;
- ``confidence``: active confidence - candidate confidence > ``max_confidence_drop``;
- ``latency``: the ratio > ``max_latency_ratio``;
- ``errors``: candidate inference errors per window > ``max_error_rate``.

Defaults of ``max_disagreement`` (``default_disagreement``), from the compression run's own
figures in the manifests (``metrics.<last stage>``):

- the candidate's ``agreement`` with its teacher a_c known: (1 - a_c) + 0.02. The candidate was
  measured to disagree with the teacher on 1 - a_c of the test windows; disagreeing with the
  active model (gated against the same teacher) on many more street windows means it behaves
  unlike it did in the lab.
- only ``accuracy`` (against labels): (1 - acc_c) + (1 - acc_b) + 0.02, acc_b the baseline's (else
  acc_c again). Two models can disagree only where at least one is wrong: the union bound.
- no figures: 0.15. The margin allows street data being noisier than a test set; the bound is
  capped to [0.02, 0.5]. ``--max-disagreement`` overrides it; the source is stored with the bounds.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field, fields

DEFAULT_DISAGREEMENT = 0.15
DISAGREEMENT_MARGIN = 0.02


@dataclass(frozen=True)
class Bounds:
    min_windows: int = 300             # windows a pole must compare before its figures count
    min_reporting: float = 0.8         # of a stage's shadowing poles, to decide before the stage's time is up
    max_disagreement: float = DEFAULT_DISAGREEMENT
    max_confidence_drop: float = 0.1   # mean top-1 probability, active minus candidate
    max_latency_ratio: float = 1.5     # candidate p95 / active p95 (median over poles)
    max_error_rate: float = 0.01       # candidate inference errors per compared window
    max_install_failures: float = 0.01  # share of poles sent it: one failing canary of 10 halts it
    max_offline: float = 0.1           # poles gone after the candidate reached them

    @classmethod
    def from_dict(cls, d: dict) -> "Bounds":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PoleFigures:
    device: str
    n: int
    agr: float | None = None
    cf: float | None = None
    acf: float | None = None
    p95_active: float | None = None
    p95_cand: float | None = None
    err: int = 0
    final: bool = False


@dataclass(frozen=True)
class StageFigures:
    sent: int = 0            # poles the candidate was sent to (this stage and before)
    failed: int = 0          # of them, refused or rolled back by the pole
    reached: int = 0         # poles running or shadowing it
    offline_after: int = 0   # of them, offline since after it reached them
    shadowing: int = 0       # this stage's reachable poles asked to shadow it (the reports expected)
    reports: list[PoleFigures] = field(default_factory=list)


@dataclass(frozen=True)
class Breach:
    gate: str
    value: float | None
    bound: float
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


def _wmean(pairs: list[tuple[float | None, int]]) -> float | None:
    pairs = [(v, w) for v, w in pairs if v is not None and w > 0]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else None


def summarise(reports: list[PoleFigures], min_windows: int) -> dict:
    """The stage's comparison figures over the poles whose reports count."""
    ok = [r for r in reports if r.n >= min_windows or (r.final and r.n > 0)]
    ratios = [r.p95_cand / r.p95_active for r in ok if r.p95_cand is not None and r.p95_active]
    n = sum(r.n for r in ok)
    out = {"agreement": _wmean([(r.agr, r.n) for r in ok]), "confidence": _wmean([(r.cf, r.n) for r in ok]),
           "active_confidence": _wmean([(r.acf, r.n) for r in ok]),
           "latency_ratio": statistics.median(ratios) if ratios else None,
           "error_rate": sum(r.err for r in ok) / n if n else None}
    return {"poles": len(ok), "windows": n, **{k: (round(v, 4) if v is not None else None) for k, v in out.items()}}


def ready(fig: StageFigures, b: Bounds) -> bool:
    """Enough of the stage's shadowing poles have compared ``min_windows`` to decide now."""
    if fig.shadowing == 0:
        return False
    return summarise(fig.reports, b.min_windows)["poles"] >= math.ceil(b.min_reporting * fig.shadowing)


def live_breaches(fig: StageFigures, b: Bounds) -> list[Breach]:
    """Checked on every tick, in every phase: install failures and poles gone offline."""
    out = []
    if fig.sent and fig.failed / fig.sent > b.max_install_failures:
        out.append(Breach("install", round(fig.failed / fig.sent, 4), b.max_install_failures,
                          f"{fig.failed} of {fig.sent} poles refused or rolled back the candidate"))
    if fig.reached and fig.offline_after / fig.reached > b.max_offline:
        out.append(Breach("offline", round(fig.offline_after / fig.reached, 4), b.max_offline,
                          f"{fig.offline_after} of {fig.reached} poles went offline after the candidate reached them"))
    return out


def shadow_breaches(fig: StageFigures, b: Bounds, expired: bool = False) -> list[Breach]:
    """The comparison gates, checked when the stage is ``ready`` (or its time is up: ``expired``)."""
    s = summarise(fig.reports, b.min_windows)
    need = max(1, math.ceil(b.min_reporting * max(fig.shadowing, 1)))
    if s["poles"] < need:
        if not expired:
            return []
        return [Breach("evidence", s["poles"], need, f"{s['poles']} poles compared {b.min_windows} windows "
                       f"before the stage's time was up; {need} needed")]
    out = []
    if s["agreement"] is not None and 1 - s["agreement"] > b.max_disagreement + 1e-9:
        out.append(Breach("agreement", round(1 - s["agreement"], 4), b.max_disagreement,
                          f"disagreement {1 - s['agreement']:.3f} over {s['windows']} windows on {s['poles']} poles"))
    if s["confidence"] is not None and s["active_confidence"] is not None \
            and s["active_confidence"] - s["confidence"] > b.max_confidence_drop + 1e-9:
        drop = s["active_confidence"] - s["confidence"]
        out.append(Breach("confidence", round(drop, 4), b.max_confidence_drop,
                          f"mean confidence {s['confidence']:.3f} vs active {s['active_confidence']:.3f}"))
    if s["latency_ratio"] is not None and s["latency_ratio"] > b.max_latency_ratio + 1e-9:
        out.append(Breach("latency", round(s["latency_ratio"], 3), b.max_latency_ratio,
                          f"median p95 ratio candidate/active {s['latency_ratio']:.2f} on {s['poles']} poles"))
    if s["error_rate"] is not None and s["error_rate"] > b.max_error_rate + 1e-9:
        out.append(Breach("errors", round(s["error_rate"], 4), b.max_error_rate,
                          f"{s['error_rate']:.3%} of windows failed in the candidate"))
    return out


def _reference_figure(metrics: dict) -> tuple[float | None, str]:
    """The final stage's agreement with the teacher, else its accuracy (manifest ``metrics``)."""
    if not isinstance(metrics, dict) or not metrics:
        return None, ""
    stages = [k for k, v in metrics.items() if isinstance(v, dict) and k != "teacher"] or list(metrics)
    last = metrics.get(stages[-1]) if stages else None
    for key in ("agreement", "accuracy"):
        v = last.get(key) if isinstance(last, dict) else None
        if isinstance(v, (int, float)) and 0 <= v <= 1:
            return float(v), f"metrics.{stages[-1]}.{key}"
    return None, ""


def default_disagreement(candidate_metrics: dict, baseline_metrics: dict | None) -> tuple[float, str]:
    """(bound, where it came from): see the module docstring."""
    c, c_src = _reference_figure(candidate_metrics)
    if c is None:
        return DEFAULT_DISAGREEMENT, "fixed default (the candidate's manifest has no agreement or accuracy)"
    if c_src.endswith(".agreement"):
        bound, why = (1 - c) + DISAGREEMENT_MARGIN, f"(1 - {c_src} {c:.3f}) + {DISAGREEMENT_MARGIN}"
    else:
        b, b_src = _reference_figure(baseline_metrics or {})
        if b is None or not b_src.endswith(".accuracy"):
            b, b_src = c, "the candidate's again"
        bound = (1 - c) + (1 - b) + DISAGREEMENT_MARGIN
        why = f"(1 - {c_src} {c:.3f}) + (1 - baseline {b_src} {b:.3f}) + {DISAGREEMENT_MARGIN}"
    return round(min(0.5, max(0.02, bound)), 4), why
