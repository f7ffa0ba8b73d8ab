"""From per-window class probabilities to events: smoothing, hysteresis, minimum duration, cooldown.

Per alerting class, a small state machine over the moving average of the last
``smooth_windows`` probabilities:

    idle --(avg >= threshold)--> pending --(held min_duration_s)--> active: emit one Event
    pending/active --(avg < release)--> idle

An event fires once, when it has lasted ``min_duration_s``; a class that fired stays quiet
for ``cooldown_s`` after it (measured from the alert), so a siren passing for a minute is
one alert, not sixty. Time is the stream's (window end, UTC ms), never the wall clock, so a
replay at any speed gives the same events.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from .config import RuleConfig


class RuleError(ValueError):
    """A rule naming a class the model does not have."""


@dataclass(frozen=True)
class Event:
    cls: str
    confidence: float  # smoothed probability when the event fired (max so far)
    start_ms: int  # start of the first window above threshold
    end_ms: int  # end of the window that fired it


@dataclass
class _ClassState:
    index: int
    threshold: float
    release: float
    active: bool = False
    fired: bool = False
    start_ms: int = 0  # start of the first window above threshold
    first_end_ms: int = 0  # its end: duration is measured from here, not from the window's start
    peak: float = 0.0
    last_fired_ms: float = -np.inf


class Rule:
    def __init__(self, cfg: RuleConfig, labels: tuple[str, ...] | list[str], key: str = "rule"):
        unknown = sorted(set(cfg.classes) - set(labels))
        if unknown:
            raise RuleError(f"{key}.classes: {unknown} not among the model's labels {list(labels)}")
        self.cfg = cfg
        self.skipped = 0  # windows ignored for non-finite scores
        self._history: deque[np.ndarray] = deque(maxlen=cfg.smooth_windows)
        self._states = {name: _ClassState(list(labels).index(name), c.threshold, c.release_threshold)
                        for name, c in cfg.classes.items()}

    def reset(self) -> None:
        """A gap in the stream: smoothing restarts, open events close (cooldowns stay)."""
        self._history.clear()
        for s in self._states.values():
            s.active = s.fired = False

    def active(self, name: str) -> bool:
        """Whether class ``name`` is above its threshold now (and not yet released): its warning is on."""
        return self._states[name].active

    def update(self, probs: np.ndarray, start_ms: int, end_ms: int) -> list[Event]:
        """Feed one window's probabilities (over all labels); return the events it fires.

        A window with a non-finite score is skipped (counted in ``skipped``): one NaN in the moving
        average would otherwise hold every class above (or below) its threshold for good."""
        p = np.asarray(probs, dtype=np.float64)
        if not np.isfinite(p).all():
            self.skipped += 1
            return []
        self._history.append(p)
        avg = np.mean(self._history, axis=0)
        events = []
        for name, s in self._states.items():
            p = float(avg[s.index])
            if not s.active:
                if p < s.threshold:
                    continue
                s.active, s.fired, s.start_ms, s.first_end_ms, s.peak = True, False, start_ms, end_ms, p
            elif p < s.release:
                s.active = False
                continue
            s.peak = max(s.peak, p)
            held = (end_ms - s.first_end_ms) / 1000.0
            if held < 0:  # the clock stepped back during the event: measure its duration from here
                s.first_end_ms, held = end_ms, 0.0
            if not s.fired and held >= self.cfg.min_duration_s:
                s.fired = True  # fired or suppressed: one decision per event
                since = end_ms - s.last_fired_ms  # < 0: the clock stepped back; the cooldown is over
                if since >= self.cfg.cooldown_s * 1000.0 or since < 0:
                    s.last_fired_ms = end_ms
                    events.append(Event(name, round(s.peak, 3), int(s.start_ms), int(end_ms)))
        return events


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
