"""Sensor slots, the fair queue and rate limits (issue 18): what others send never takes a listed sensor's share.

Seen: sixteen valid chunks under made-up names took every slot and the real microphone was dropped
until a restart; one sensor's flood filled the queue and the real microphone produced 2 of 32
alerts. The flood against a real broker and agent is ``test_hardening_flood.py``.
"""

from __future__ import annotations

import queue

import pytest

from agent.config import DeviceSection
from agent.sources import Message
from agent.sources.fairqueue import FairQueue
from agent.sources.mqtt import TokenBuckets
from agent.sources.slots import SensorSlots


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _slots(**device) -> tuple[SensorSlots, Clock]:
    clock = Clock()
    return SensorSlots(DeviceSection(id="d", site="s", **device), clock), clock


def test_a_listed_sensor_keeps_its_slot_after_16_made_up_ones():
    slots, _ = _slots(max_sensors=16, sensors={"audio": ["mic0"]})
    taken = [s for s in (f"fake{i}" for i in range(16)) if slots.admit("audio", s) is None and
             not slots.claim("audio", s)]
    assert len(taken) == 15  # one slot of the 16 is the mic's
    assert slots.admit("audio", "fake99") == "too_many_sensors"
    assert slots.admit("audio", "mic0") is None
    slots.claim("audio", "mic0")
    assert len(slots.held["audio"]) == 16


def test_an_idle_unlisted_sensor_gives_its_slot_to_a_newcomer():
    slots, clock = _slots(max_sensors=2, sensor_idle_s=60)
    for s in ("a", "b"):
        slots.claim("audio", s)
    clock.t = 30
    slots.claim("audio", "b")
    assert slots.admit("audio", "c") == "too_many_sensors"  # a is idle 30 s only
    clock.t = 61
    assert slots.admit("audio", "c") is None
    assert slots.claim("audio", "c") == ["a"]  # the idlest goes; its state must be forgotten
    assert set(slots.held["audio"]) == {"b", "c"}


def test_refuse_mode_reads_only_listed_sensors():
    slots, _ = _slots(sensors={"detector": ["loop1"]}, unknown_sensors="refuse")
    assert slots.admit("detector", "loop1") is None
    assert slots.admit("detector", "loop2") == "unknown_sensor"


def test_the_sensor_list_is_validated_with_the_dotted_key():
    with pytest.raises(ValueError, match="sensors.audio"):
        DeviceSection(id="d", site="s", max_sensors=1, sensors={"audio": ["a", "b"]})
    with pytest.raises(ValueError, match="sensors.audio"):
        DeviceSection(id="d", site="s", sensors={"audio": ["mic/0"]})


# ----------------------------------------------------------------------------- fair queue

def _msg(sensor: str, size: int = 10, kind: str = "audio") -> Message:
    return Message(kind, sensor, b"x" * size, 0.0)


def _fair(n: int, nbytes: int, dropped: list) -> FairQueue:
    return FairQueue(n, nbytes, lambda m: (m.kind, m.sensor), dropped.append)


def test_a_flooding_sensor_only_ever_pushes_out_its_own_messages():
    dropped: list[Message] = []
    q = _fair(100, 10**6, dropped)
    for i in range(10_000):
        try:
            q.put(_msg("flood"))
        except queue.Full:
            dropped.append(_msg("flood"))
        if i % 300 == 0:
            q.put(_msg("mic0"))  # never refused: its lane is the smaller (no worker drains here)
    got = [q.get_nowait().sensor for _ in range(q.qsize())]
    assert got.count("mic0") == 34 and {m.sensor for m in dropped} == {"flood"}


def test_the_worker_takes_each_lane_in_turn():
    q = _fair(100, 10**6, [])
    for _ in range(30):
        q.put(_msg("flood"))
    q.put(_msg("mic0"))
    order = [q.get_nowait().sensor for _ in range(3)]
    assert order == ["flood", "mic0", "flood"]


def test_a_sensor_that_changes_lane_is_still_read_in_the_order_it_sent():
    """A new microphone's first chunks wait in the shared lane; once it holds a slot its lane is its own.
    Its newer chunks must not overtake the older ones (each gap restarts the noise window)."""
    own = set()
    q = FairQueue(100, 10**6, lambda m: (m.kind, m.sensor if m.sensor in own else None), lambda m: None)
    for i in range(3):
        q.put(Message("audio", "other", b"x" * 10, float(i)))
    for i in range(3):
        q.put(Message("audio", "mic0", b"x" * 10, float(i)))
    own.add("mic0")  # the slot is granted while three of its chunks still wait in the shared lane
    for i in range(3, 6):
        q.put(Message("audio", "mic0", b"x" * 10, float(i)))
    got = [m.received_ms for m in (q.get_nowait() for _ in range(q.qsize())) if m.sensor == "mic0"]
    assert got == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_the_queue_is_bounded_in_bytes():
    dropped: list[Message] = []
    q = _fair(1000, 100_000, dropped)
    for _ in range(50):
        try:
            q.put(_msg("cam0", 30_000, "camera"))
        except queue.Full:
            pass
    assert q.nbytes <= 100_000
    q.put(_msg("mic0", 20_000))  # a smaller sensor still gets in: the big lane gives way
    assert q.nbytes <= 100_000 and dropped and dropped[0].sensor == "cam0"
    with pytest.raises(queue.Full):
        q.put(_msg("huge", 200_000))


def test_a_rate_limit_holds_each_sensor_to_its_rate_independently():
    clock = Clock()
    buckets = TokenBuckets(rate=10, burst=5, clock=clock)
    assert sum(buckets.allow(("audio", "flood")) for _ in range(100)) == 5  # the burst, then nothing
    assert all(buckets.allow(("audio", "mic0")) for _ in range(5))  # another sensor is unaffected
    clock.t = 1.0
    assert sum(buckets.allow(("audio", "flood")) for _ in range(100)) == 5  # refilled at 10/s, capped at burst
