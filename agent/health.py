"""Counters, rate-limited logging of bad input, the clock's quality, the health message and the health file.

Bad sensor input is counted per reason and logged at most once per reason every
``log_every_s`` (with the count since the last line), so 10,000 garbage messages cost
10,000 counter increments and a handful of log lines.

Accounting: every sensor message a source receives is counted in ``rx`` (by kind) and then
either in ``ok`` (decoded and handed to the tasks) or under one input reason in ``bad``
(``queue_full`` included); messages on an unknown topic are counted as ``bad.topic`` before
receipt. Reasons in ``AFTER_DECODE`` are counted later (per task or per stored message), so
once the queue is empty: sum(rx) == sum(ok) + sum(bad) - bad.topic - sum(bad[AFTER_DECODE]).

Each task's inference calls are timed (``timed``): windows processed and p50/p95 latency over
the last ``LATENCY_SAMPLES`` windows go into the heartbeat, with CPU and RSS of the process
(and, while a candidate model shadows a task, its figures: ``agent.shadow``).
The heartbeat is also written to a local file for the container healthcheck
(``roadside health --file``), stamped with the monotonic clock so that a wall-clock jump
neither hides a hung agent nor fakes one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import resource
import threading
import time
from collections import Counter, deque
from pathlib import Path
from typing import Callable

import numpy as np

log = logging.getLogger("roadside.input")
LATENCY_SAMPLES = 1024
# Counted after decoding, per task or per stored message: not part of the per-message balance.
AFTER_DECODE = frozenset({"out_of_order", "task_error", "alert_too_large", "outbox_error", "mic_overflow"})


class TaskStats:
    """Windows run through one task's model and the latency of the last ``LATENCY_SAMPLES`` of them."""

    def __init__(self):
        self.windows = 0
        self._ms: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self._lock = threading.Lock()

    def add(self, ms: float) -> None:
        with self._lock:
            self.windows += 1
            self._ms.append(ms)

    def snapshot(self) -> dict:
        with self._lock:
            ms = np.fromiter(self._ms, float) if self._ms else None
            out = {"windows": self.windows}
        if ms is not None:
            p50, p95 = np.percentile(ms, [50, 95])
            out.update(p50_ms=round(float(p50), 3), p95_ms=round(float(p95), 3))
        return out


class Health:
    def __init__(self, log_every_s: float = 60.0):
        self.log_every_s = log_every_s
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self.received: Counter[str] = Counter()
        self.malformed: Counter[str] = Counter()
        self.events: Counter[str] = Counter()  # windows, alerts, summaries, errors...
        self.accepted: Counter[str] = Counter()  # decoded and handed to the tasks, by kind
        self.tasks: dict[str, TaskStats] = {}
        self._last_log: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()
        # (task, model input, model output, ms) after every timed window: shadow mode (agent.shadow) scores
        # a candidate on the very same input here, so no task needs to know about it. Must not raise.
        self.tap: Callable[[str, object, object, float], None] | None = None

    def count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.events[what] += n

    def receive(self, kind: str) -> None:
        with self._lock:
            self.received[kind] += 1

    def accept(self, kind: str) -> None:
        with self._lock:
            self.accepted[kind] += 1

    def timed(self, task: str, run: Callable) -> Callable:
        """``run`` wrapped so that every call counts as one window of ``task`` and is timed."""
        stats = self.tasks.setdefault(task, TaskStats())

        def timed_run(x):
            t0 = time.perf_counter()
            out = run(x)
            ms = (time.perf_counter() - t0) * 1000.0
            stats.add(ms)
            tap = self.tap
            if tap is not None:
                tap(task, x, out, ms)
            return out

        return timed_run

    def drop(self, reason: str, detail: str = "") -> None:
        """One sensor message dropped for ``reason``; logged at a bounded rate."""
        now = time.monotonic()
        with self._lock:
            self.malformed[reason] += 1
            self._unlogged[reason] += 1
            if now - self._last_log.get(reason, -1e9) < self.log_every_s:
                return
            n, self._unlogged[reason] = self._unlogged[reason], 0
            self._last_log[reason] = now
        log.warning("dropped %d sensor message(s): %s%s", n, reason, f" ({detail[:200]})" if detail else "")

    def snapshot(self) -> dict:
        with self._lock:
            snap = {"up_s": round(time.monotonic() - self.started, 1), "rx": dict(self.received),
                    "ok": dict(self.accepted), "bad": dict(self.malformed), "n": dict(self.events)}
        snap["tasks"] = {name: st.snapshot() for name, st in list(self.tasks.items())}
        return snap


class ProcessStats:
    """CPU (percent of one core since the last call, and seconds in total) and resident memory."""

    def __init__(self):
        self._last = (time.monotonic(), self._cpu_s())

    @staticmethod
    def _cpu_s() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    @staticmethod
    def rss_mb() -> float:
        try:  # current RSS (Linux); ru_maxrss is the peak, the fallback elsewhere
            pages = int(Path("/proc/self/statm").read_text().split()[1])
            return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError, IndexError):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def snapshot(self) -> dict:
        now, cpu = time.monotonic(), self._cpu_s()
        t0, c0 = self._last
        self._last = (now, cpu)
        pct = 100.0 * (cpu - c0) / (now - t0) if now > t0 else 0.0
        return {"cpu": {"pct": round(pct, 1), "s": round(cpu, 1)}, "rss_mb": round(self.rss_mb(), 1)}


def clock_synced() -> bool:
    """True when the kernel says the clock is synchronised (NTP/PTP/GPS discipline), via adjtimex.

    Linux sets STA_UNSYNC (and adjtimex returns TIME_ERROR) while no time daemon disciplines
    the clock; anything we cannot ask counts as free-running.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        buf = ctypes.create_string_buffer(512)  # struct timex is ~208 bytes; modes = 0 (read only)
        state = libc.adjtimex(buf)
    except (OSError, AttributeError):
        return False
    TIME_ERROR = 5
    return state not in (-1, TIME_ERROR)


def heartbeat(health: Health, extra: dict) -> dict:
    """The health message (docs/mqtt.md 2.4): counters and task stats, plus the runtime's ``extra``."""
    return {"v": 1, "ts": int(time.time() * 1000), **health.snapshot(), **extra}


# ------------------------------------------------------------------------------ health file

def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def write_health_file(path: Path, beat: dict, every_s: float, problems: list[str]) -> None:
    """The last heartbeat plus the verdict, replaced atomically (a reader never sees half a file)."""
    doc = {**beat, "every_s": every_s, "mono": time.monotonic(), "boot_id": _boot_id(),
           "status": "unhealthy" if problems else "ok", "problems": problems}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, separators=(",", ":")))
    os.replace(tmp, path)


def check_health_file(path: Path | str, max_age_s: float | None = None) -> tuple[bool, str]:
    """(healthy, one line why) from a health file: unhealthy when missing, stale or reporting problems.

    Age is measured on the monotonic clock when the file was written during this boot (a
    wall-clock jump changes nothing), else on the wall clock. Default ``max_age_s``: three
    heartbeat periods plus 5 s.
    """
    try:
        doc = json.loads(Path(path).read_text())
        every = float(doc["every_s"])
        age = (time.monotonic() - float(doc["mono"]) if doc.get("boot_id") and doc["boot_id"] == _boot_id()
               else time.time() - float(doc["ts"]) / 1000.0)
    except FileNotFoundError:
        return False, f"{path}: no health file (agent not running?)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return False, f"{path}: unreadable health file ({type(e).__name__}: {e})"
    if not 0 < every <= 3600:  # .inf (or a huge period) would make a hung agent look fresh forever
        return False, f"{path}: heartbeat period {every!r} s is not a period up to an hour"
    limit = max_age_s if max_age_s is not None else 3 * every + 5
    if age > limit:
        return False, f"stale: last heartbeat {age:.0f} s ago (allowed {limit:.0f} s)"
    if doc.get("status") != "ok":
        return False, "unhealthy: " + "; ".join(doc.get("problems") or ["status " + str(doc.get("status"))])
    return True, f"ok: heartbeat {age:.1f} s ago, uptime {doc.get('up_s')} s"
