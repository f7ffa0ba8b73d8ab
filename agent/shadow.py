"""Shadow mode (docs/rollouts.md): a candidate model beside the active one, scored on the same windows.

``Health.timed`` times every inference of an active task; its ``tap`` hands each window's model
input and output to ``Shadows.observe``, which runs the candidate's backend on that very input
tensor. So a candidate costs one inference per window and nothing more: no second front-end, no
window or rule state of its own in use, and it never returns a ``Detection``, so it can neither
raise an alert nor touch the active task's smoothing. Models are compared by label name (a
candidate may order its labels differently); a candidate must take the active model's input
(same front-end and input shape, checked when it is installed).

Bounds: ``windows`` and ``minutes`` (each capped by ``updates.shadow``), a CPU budget (after
its first ``WARMUP`` runs, the candidate skips a window, counted as ``sk``, while its inference
time so far exceeds ``cpu_share`` x the active model's over the same windows), the model file's
size (checked before loading) and the growth of resident memory its load caused (measured
after). A candidate lives in memory only: a restart of the agent ends it (its files are pruned
with the next update of the task).

This module is the data path (the health tap); the commands that start, promote and abort a
shadow are in ``agent.control.shadow``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .health import LATENCY_SAMPLES
from .rules import softmax

log = logging.getLogger("roadside.shadow")
WARMUP = 3  # candidate inferences before the CPU budget applies


# ------------------------------------------------------------------------ statistics

def js_divergence(p: Counter, q: Counter) -> float:
    """Jensen-Shannon divergence, base 2 (0: same histogram, 1: disjoint), of two label histograms."""
    labels = sorted(set(p) | set(q))
    a = np.array([p[k] for k in labels], float)
    b = np.array([q[k] for k in labels], float)
    if not a.sum() or not b.sum():
        return 0.0
    a, b = a / a.sum(), b / b.sum()
    m = (a + b) / 2

    def kl(x: np.ndarray) -> float:  # 0 * log 0 = 0: empty bins contribute nothing
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / m[nz])))

    return min(1.0, max(0.0, (kl(a) + kl(b)) / 2))


def _p95(ms: deque) -> float | None:
    return round(float(np.percentile(np.fromiter(ms, float), 95)), 1) if ms else None


def _mean(total: float, n: int) -> float | None:
    return round(total / n, 3) if n else None


class Comparison:
    """Cumulative figures of one shadow; index 0 is the active model, 1 the candidate (as in ``p95``)."""

    def __init__(self):
        self.n = self.sk = self.err = self.agree = 0
        self.conf = [0.0, 0.0]  # sums of top-1 probabilities
        self.hist: tuple[Counter, Counter] = (Counter(), Counter())  # predicted labels
        self.ms: tuple[deque, deque] = (deque(maxlen=LATENCY_SAMPLES), deque(maxlen=LATENCY_SAMPLES))
        self.spent_ms = [0.0, 0.0]  # inference time over the shadow's windows: the CPU budget
        self.cpu_ms = 0.0  # process CPU time the candidate's inferences took (all of onnxruntime's threads)

    def over_budget(self, share: float) -> bool:
        # Not before WARMUP runs: a fresh session's first inferences pay one-off costs (arenas, thread
        # pool) that would otherwise make an equally costly candidate skip its first windows.
        return self.n + self.err >= WARMUP and self.spent_ms[1] > share * self.spent_ms[0]

    def add(self, active: tuple[str, float, float], candidate: tuple[str, float, float]) -> None:
        """One compared window: (top-1 label, its probability, inference ms) of each model."""
        self.n += 1
        self.agree += active[0] == candidate[0]
        for i, (label, p, ms) in enumerate((active, candidate)):
            self.conf[i] += p
            self.hist[i][label] += 1
            if self.n > WARMUP:  # a fresh session's first runs are slow: a warm active model against a
                self.ms[i].append(ms)  # cold candidate would fail the city's latency gate by itself

    def figures(self) -> dict:
        """The report's statistics (docs/rollouts.md); null where nothing was compared yet."""
        return {"n": self.n, "sk": self.sk, "agr": _mean(self.agree, self.n), "cf": _mean(self.conf[1], self.n),
                "acf": _mean(self.conf[0], self.n),
                "div": round(js_divergence(*self.hist), 3) if self.n else None,
                "p95": [_p95(self.ms[0]), _p95(self.ms[1])], "err": self.err}


def top1(logits: np.ndarray, labels: tuple) -> tuple[str, float] | None:
    """(label, probability) of one window's logits (batch of 1), or None if they are not usable."""
    out = np.asarray(logits)
    if out.shape != (1, len(labels)) or not np.isfinite(out).all():
        return None
    probs = softmax(out[0])
    i = int(np.argmax(probs))
    return labels[i], float(probs[i])


# ------------------------------------------------------------------------- candidate

@dataclass
class Candidate:
    staged: Any  # agent.control.model.Staged: folder, verified manifest, model sha256, release
    task: Any  # the built task (never instrumented, never handed to the worker while shadowing)
    windows: int
    deadline: float  # time.monotonic()
    report_every: int
    cpu_share: float
    rss_mb: float  # resident memory its load added
    active_sha: str
    stats: Comparison = field(default_factory=Comparison)
    ended: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return self.staged.task

    @property
    def labels(self) -> tuple:
        return tuple(self.task.model.contract.labels)

    def report(self, end: bool) -> dict:
        """A report's body (``agent.alerts.encode_shadow`` adds v, id, ts); call with the lock held."""
        return {"k": self.name, "cs": self.staged.sha[:16], "as": self.active_sha[:16], **self.stats.figures(),
                "end": int(end)}

    def finish(self) -> dict | None:
        """End it (bounds reached, or removed): the final report, or None if it had ended already."""
        with self.lock:
            if self.ended:
                return None
            self.ended = True
            return self.report(True)

    def observe(self, x: np.ndarray, out: np.ndarray, active_ms: float, active: Any) -> dict | None:
        """One window the active model scored: run the candidate on the same input; the report due, if any."""
        a = top1(out, tuple(active.model.contract.labels))
        s = self.stats
        with self.lock:
            if self.ended or a is None:  # an unusable active output compares nothing
                return None
            self.active_sha = active.model.info.sha256
            s.spent_ms[0] += active_ms
            if s.over_budget(self.cpu_share):
                s.sk += 1
                return None
        c0, t0 = time.process_time(), time.perf_counter()
        try:
            c = top1(self.task.model.backend.run(x), self.labels)
        except Exception as e:  # a candidate failing is a figure of the candidate, never the pole's problem
            log.debug("candidate %s: inference failed: %s: %s", self.staged.sha[:12], type(e).__name__, e)
            c = None
        ms, cpu_ms = (time.perf_counter() - t0) * 1000.0, (time.process_time() - c0) * 1000.0
        with self.lock:
            if self.ended:  # removed (promote, abort) while it ran: the final report is out already
                return None
            s.spent_ms[1] += ms
            s.cpu_ms += cpu_ms
            if c is None:
                s.err += 1
                return None
            s.add((*a, active_ms), (*c, ms))
            if s.n % self.report_every == 0 and s.n < self.windows:
                return self.report(False)
        return self.finish() if s.n >= self.windows else None


# --------------------------------------------------------------------- the registry

class Shadows:
    """Candidates by task. ``observe`` runs on the worker thread, the rest on the command thread."""

    def __init__(self, active: Callable[[str], Any], emit: Callable[[dict], None], changed: Callable[[], None]):
        self._active, self._emit, self._changed = active, emit, changed
        self._by_task: dict[str, Candidate] = {}  # replaced whole on every change: readers need no lock
        self._lock = threading.Lock()

    def get(self, task: str) -> Candidate | None:
        return self._by_task.get(task)

    def install(self, cand: Candidate) -> Candidate | None:
        """``cand`` shadows its task now; the candidate it replaces (already finished), if any."""
        with self._lock:
            old = self._by_task.get(cand.name)
            self._by_task = {**self._by_task, cand.name: cand}
        if old is not None:
            self._end(old)
        self._changed()
        return old

    def remove(self, task: str) -> Candidate | None:
        """The task's candidate out of the registry (its final report sent if it had not ended)."""
        with self._lock:
            cand = self._by_task.get(task)
            if cand is None:
                return None
            self._by_task = {k: v for k, v in self._by_task.items() if k != task}
        self._end(cand)
        self._changed()
        return cand

    def drop(self, task: str, why: str, store: Any) -> None:
        """Remove the task's candidate and its files (a model update replaced what it was compared with)."""
        cand = self.remove(task)
        if cand is not None:
            log.info("task %s: shadow candidate %s dropped: %s", task, cand.staged.sha[:12], why)
            store.discard(task, cand.staged.folder)  # kept if it became current or previous meanwhile

    def observe(self, task: str, x: np.ndarray, out: np.ndarray, ms: float) -> None:
        """``Health.tap``: never raises, whatever the candidate does (the active result is already made)."""
        cand = self._by_task.get(task)
        if cand is None or cand.ended:
            return
        if time.monotonic() >= cand.deadline:  # the minutes ran out: this window is not compared
            self._end(cand)
            self._changed()
            return
        try:
            active = self._active(task)
            report = cand.observe(x, out, ms, active) if active is not None else None
        except Exception:
            log.exception("task %s: shadow comparison failed", task)
            return
        if report is not None:
            self._emit(report)
            if report["end"]:
                self._changed()

    def tick(self) -> None:
        """From the heartbeat: end the shadows whose minutes ran out (also when no window came)."""
        now = time.monotonic()
        for cand in list(self._by_task.values()):
            if not cand.ended and now >= cand.deadline:
                self._end(cand)
                self._changed()

    def _end(self, cand: Candidate) -> None:
        report = cand.finish()
        if report is not None:
            self._emit(report)
            log.info("task %s: shadow of %s ended: %s", cand.name, cand.staged.sha[:12], report)

    def state(self) -> dict:
        """For the retained state message: ``{task: {sha256, release, n}}``."""
        return {t: {"sha256": c.staged.sha, "release": c.staged.release, "n": c.stats.n}
                for t, c in self._by_task.items()}

    def health(self) -> dict:
        """For the heartbeat: ``{task: {n, sk, cpu_ms, rss_mb}}``."""
        return {t: {"n": c.stats.n, "sk": c.stats.sk, "cpu_ms": round(c.stats.cpu_ms, 1),
                    "rss_mb": round(c.rss_mb, 1)} for t, c in self._by_task.items()}
