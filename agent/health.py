"""Counters, rate-limited logging of bad input, the clock's quality, and the health message.

Bad sensor input is counted per reason and logged at most once per reason every
``log_every_s`` (with the count since the last line), so 10,000 garbage messages cost
10,000 counter increments and a handful of log lines.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import threading
import time
from collections import Counter

log = logging.getLogger("roadside.input")


class Health:
    def __init__(self, log_every_s: float = 60.0):
        self.log_every_s = log_every_s
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self.received: Counter[str] = Counter()
        self.malformed: Counter[str] = Counter()
        self.events: Counter[str] = Counter()  # windows, alerts, summaries, errors...
        self._last_log: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()

    def count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.events[what] += n

    def receive(self, kind: str) -> None:
        with self._lock:
            self.received[kind] += 1

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
            return {"up_s": round(time.monotonic() - self.started, 1), "rx": dict(self.received),
                    "bad": dict(self.malformed), "n": dict(self.events)}


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


def heartbeat_payload(health: Health, extra: dict) -> bytes:
    return json.dumps({"v": 1, "ts": int(time.time() * 1000), **health.snapshot(), **extra},
                      separators=(",", ":")).encode()
