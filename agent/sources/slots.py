"""Sensor slots: which sensors the agent keeps state for (windows, meters, rules), per kind.

Per-sensor state is bounded by ``device.max_sensors`` per kind. Found by attack: sixteen valid
chunks under made-up names used to take every slot for good, and the real microphone was then
dropped until a restart. Now:

- sensors listed in ``device.sensors`` always have their slot (reserved; never evicted);
- with ``device.unknown_sensors: refuse`` nothing else is read ("unknown_sensor");
- otherwise other sensors share the slots left, and when those are full a newcomer takes the
  slot of the one idle longest, if it has been idle ``device.sensor_idle_s`` or more (its state is
  forgotten); else the newcomer is dropped ("too_many_sensors").

``admit`` is the cheap check made before a message is decoded; ``claim`` takes the slot once it
decoded (garbage never holds a slot). ``holds`` is read by the queue on the network thread to give
each slot holder its own lane (set and dict membership are atomic under the GIL).
"""

from __future__ import annotations

import time
from typing import Callable

KINDS = ("audio", "camera", "detector")


class SensorSlots:
    def __init__(self, device, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.held: dict[str, dict[str, float]] = {k: {} for k in KINDS}  # kind -> sensor -> last seen
        self.configure(device)

    def configure(self, device) -> None:
        """(Re)read the limits from a ``device:`` section; slots already held are kept."""
        self.max_sensors = device.max_sensors
        self.reserved = {k: frozenset(device.sensors.get(k, ())) for k in KINDS}
        self.accept_unknown = device.unknown_sensors == "accept"
        self.idle_s = device.sensor_idle_s

    def holds(self, kind: str, sensor: str) -> bool:
        return sensor in self.reserved.get(kind, ()) or sensor in self.held.get(kind, ())

    def admit(self, kind: str, sensor: str) -> str | None:
        """None when a message of this sensor may be decoded, else the reason it is dropped."""
        if self.holds(kind, sensor):
            return None
        if not self.accept_unknown:
            return "unknown_sensor"
        if self._free(kind) > 0 or self._idlest(kind) is not None:
            return None
        return "too_many_sensors"

    def claim(self, kind: str, sensor: str) -> list[str]:
        """Take (or refresh) this sensor's slot; returns the sensors evicted to make room (forget their state)."""
        held = self.held[kind]
        evicted = []
        if sensor not in held and sensor not in self.reserved[kind] and self._free(kind) <= 0:
            idlest = self._idlest(kind)
            if idlest is None:  # admit said yes, but another sensor took the last slot meanwhile
                raise LookupError(f"no slot for {kind}/{sensor}")
            del held[idlest]
            evicted.append(idlest)
        held[sensor] = self.clock()
        return evicted

    def _unknown(self, kind: str) -> list[str]:
        return [s for s in self.held[kind] if s not in self.reserved[kind]]

    def _free(self, kind: str) -> int:
        return self.max_sensors - len(self.reserved[kind]) - len(self._unknown(kind))

    def _idlest(self, kind: str) -> str | None:
        """The unlisted sensor seen longest ago, if it has been idle ``idle_s``; else None."""
        unknown = self._unknown(kind)
        if not unknown:
            return None
        s = min(unknown, key=self.held[kind].__getitem__)
        return s if self.clock() - self.held[kind][s] >= self.idle_s else None
