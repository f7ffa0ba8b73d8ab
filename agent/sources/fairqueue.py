"""The queue between the sources and the worker: bounded in messages and bytes, fair between sensors.

Found by attack: with one FIFO, 30 s of flooding from one sensor filled the queue and the real
microphone produced 2 of 32 expected alerts. Here every lane (a sensor holding a slot, or one
shared lane per kind for all others) has its own FIFO; the worker takes one message from each
lane in turn (round robin), so a configured sensor gets its turn whatever others send. When
the queue is full, room is made by dropping the oldest message of the biggest lane (in the
resource that is short, messages or bytes), never of a lane smaller than the newcomer's: a
flood only ever pushes out its own messages ("longest queue drop"). Dropped messages go to
``on_drop`` (counted as ``queue_full``). ``put``/``get``/``get_nowait``/``qsize`` behave as
``queue.Queue``'s (``queue.Full``, ``queue.Empty``), so sources need not know.

A sensor's messages never overtake each other: while some of them still wait in one lane (say
the shared one, before the sensor got its slot), its newer ones join that lane too. Found in
review: a new microphone's chunks split across the shared lane and its own arrived out of order,
and every gap in the chunk sequence restarts the noise window.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict, deque
from typing import Callable, Hashable

from . import Message


class FairQueue:
    def __init__(self, max_messages: int, max_bytes: int, lane_of: Callable[[Message], Hashable],
                 on_drop: Callable[[Message], None] = lambda m: None):
        self.max_messages, self.max_bytes = max_messages, max_bytes
        self.lane_of, self.on_drop = lane_of, on_drop
        self._lanes: OrderedDict[Hashable, deque[Message]] = OrderedDict()  # order = round-robin turn
        self._bytes: dict[Hashable, int] = {}
        self._n = self._total = 0
        self._waiting: dict[tuple[str, str], tuple[Hashable, int]] = {}  # sensor -> (its lane, messages queued)
        self._cv = threading.Condition()

    def qsize(self) -> int:
        return self._n

    @property
    def nbytes(self) -> int:
        return self._total

    def put(self, msg: Message, block: bool = False, timeout: float | None = None) -> None:
        size, sensor = len(msg.payload), (msg.kind, msg.sensor)
        if size > self.max_bytes:
            raise queue.Full
        deadline = None if timeout is None else time.monotonic() + timeout
        dropped = []
        with self._cv:
            lane = self._waiting.get(sensor, (self.lane_of(msg), 0))[0]  # behind its own older messages
            while self._n + 1 > self.max_messages or self._total + size > self.max_bytes:
                victim = None if block else self._victim(lane, size)
                if victim is not None:
                    dropped.append(self._pop(victim))
                    continue
                if not block:
                    raise queue.Full
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise queue.Full
                self._cv.wait(left)
            q = self._lanes.get(lane)
            if q is None:
                q = self._lanes[lane] = deque()
                self._bytes[lane] = 0
            q.append(msg)
            self._waiting[sensor] = (lane, self._waiting.get(sensor, (lane, 0))[1] + 1)
            self._bytes[lane] += size
            self._n += 1
            self._total += size
            self._cv.notify()
        for m in dropped:  # outside the lock: counting may log
            self.on_drop(m)

    def _victim(self, lane: Hashable, size: int) -> Hashable | None:
        """The lane to drop from so that ``lane`` may add a message of ``size``, or None (refuse the newcomer)."""
        if self._total + size > self.max_bytes:
            big = max(self._bytes, key=self._bytes.__getitem__)
            return big if big != lane and self._bytes[big] > self._bytes.get(lane, 0) + size else None
        big = max(self._lanes, key=lambda k: len(self._lanes[k]))
        return big if big != lane and len(self._lanes[big]) > len(self._lanes.get(lane, ())) + 1 else None

    def _pop(self, lane: Hashable) -> Message:
        """The oldest message of ``lane`` (lock held); an emptied lane is removed."""
        q = self._lanes[lane]
        msg = q.popleft()
        sensor = (msg.kind, msg.sensor)
        left = self._waiting[sensor][1] - 1
        if left:
            self._waiting[sensor] = (lane, left)
        else:
            del self._waiting[sensor]
        self._bytes[lane] -= len(msg.payload)
        self._n -= 1
        self._total -= len(msg.payload)
        if not q:
            del self._lanes[lane], self._bytes[lane]
        return msg

    def get(self, block: bool = True, timeout: float | None = None) -> Message:
        with self._cv:
            if not self._wait(block, timeout):
                raise queue.Empty
            lane = next(iter(self._lanes))
            msg = self._pop(lane)
            if lane in self._lanes:
                self._lanes.move_to_end(lane)  # its next message waits for every other lane's turn
            self._cv.notify_all()  # a blocked put may have room now
            return msg

    def get_nowait(self) -> Message:
        return self.get(block=False)

    def _wait(self, block: bool, timeout: float | None) -> bool:
        if not block:
            return self._n > 0
        return self._cv.wait_for(lambda: self._n > 0, timeout)
