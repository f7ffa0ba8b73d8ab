"""Ring buffer windowing: the last ``window`` samples, handed out every ``hop`` samples.

Memory is one preallocated window, whatever the chunk sizes; a window is copied out
(oldest sample first) only when it is due, so a 4 s window every 1 s costs one copy
per second, not one per chunk.
"""

from __future__ import annotations

import numpy as np


class SlidingWindow:
    def __init__(self, window: int, hop: int):
        if window <= 0 or hop <= 0:
            raise ValueError(f"window and hop must be positive sample counts, got {window}, {hop}")
        self.window, self.hop = int(window), int(hop)
        self._buf = np.zeros(self.window, dtype=np.float32)
        self.reset()

    def reset(self) -> None:
        """Forget the signal (a gap in the stream): the next window needs a full buffer again."""
        self._pos = 0  # where the next sample goes; also the oldest sample once full
        self._due = self.window  # samples still needed before the next window

    def push(self, x: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Add samples; return ``(end, window)`` for each window completed, ``end`` being the index
        in ``x`` just past the window's last sample (to time-stamp it)."""
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        out, i = [], 0
        while i < x.size:
            n = min(x.size - i, self._due)
            self._write(x[i:i + n])
            i += n
            self._due -= n
            if self._due == 0:
                out.append((i, np.concatenate([self._buf[self._pos:], self._buf[:self._pos]])))
                self._due = self.hop
        return out

    def _write(self, x: np.ndarray) -> None:
        if x.size >= self.window:  # only the last window of a long block matters
            self._buf[:] = x[-self.window:]
            self._pos = 0
            return
        first = min(x.size, self.window - self._pos)
        self._buf[self._pos:self._pos + first] = x[:first]
        self._buf[:x.size - first] = x[first:]
        self._pos = (self._pos + x.size) % self.window
