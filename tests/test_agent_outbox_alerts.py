"""Alerts on the wire (<= 256 bytes, ids) and the durable outbox (seq across restarts, bounds, priorities)."""

from __future__ import annotations

import json

from agent.alerts import MAX_BYTES, ModelInfo, Origin, encode_alert, encode_summary, mark_replayed
from agent.outbox import ALERT, SUMMARY, Outbox

LONGEST = Origin("d" * 32, 999_999, "f" * 16)
MODEL = ModelInfo("n" * 40, "v" * 40, "a" * 64)


def _alert(origin: Origin, seq: int, **kw) -> bytes:
    args = dict(ts_ms=1_714_550_400_123, synced=True, kind="congestion", sensor="s" * 40, cls="c" * 40,
                confidence=0.987654, window_ms=3_600_000, metrics={"speed": 12.345, "lim": 65.0}, model=MODEL)
    return encode_alert(origin, seq, **{**args, **kw})


def test_worst_case_alert_fits_256_bytes_even_when_replayed():
    payload = mark_replayed(_alert(LONGEST, 2**40))
    assert len(payload) <= MAX_BYTES
    d = json.loads(payload)
    assert d["id"] == f"{'d' * 32}:999999:{2**40}" and d["r"] == 1 and d["ms"] == "a" * 16


def test_typical_alert_fields():
    d = json.loads(_alert(Origin("pole-7", 3, "0123456789abcdef"), 42, sensor="mic0", cls="siren", kind="noise",
                          metrics={}))
    assert {k: d[k] for k in ("v", "id", "tq", "k", "s", "c", "p")} == {
        "v": 1, "id": "pole-7:3:42", "tq": "s", "k": "noise", "s": "mic0", "c": "siren", "p": 0.988}


def test_summary_is_compact_json():
    s = encode_summary(LONGEST, 1, ts_ms=0, synced=False, sensor="mic0", seconds=60, laeq=61.23, lafmax=80.0,
                       l10=64.0, l90=50.0, limit_db=65, period="day")
    assert len(s) < MAX_BYTES and json.loads(s)["tq"] == "f"


def test_seq_and_boot_persist_across_reopen(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", 100_000, 200_000)
    assert box.next_boot() == 1
    seqs = [box.put(ALERT, "alert/noise", lambda seq: b'{"seq":%d}' % seq)[1] for _ in range(3)]
    box.close()  # as after a crash: nothing else was written
    box = Outbox(tmp_path / "o.sqlite", 100_000, 200_000)
    assert box.next_boot() == 2
    assert seqs == [1, 2, 3] and box.put(ALERT, "alert/noise", lambda seq: b"{}")[1] == 4
    assert [r.id for r in box.pending()] == [1, 2, 3, 4]


def test_ack_removes_and_pending_is_in_order(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", 100_000, 200_000)
    ids = [box.put(ALERT, "a", lambda s: b"{}")[0] for _ in range(5)]
    box.ack(ids[1])
    assert [r.id for r in box.pending(after_id=ids[0])] == ids[2:]


def test_summaries_go_first_then_alerts_only_at_the_hard_cap(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", max_bytes=10_000, hard_cap_bytes=20_000)
    blob = lambda seq: b"x" * 1000  # noqa: E731
    for _ in range(8):
        box.put(SUMMARY, "summary", blob)
    for _ in range(8):
        box.put(ALERT, "alert/noise", blob)
    s = box.stats()
    assert (s["alerts"], s["summaries_dropped"], s["alerts_dropped"]) == (8, 6, 0)  # oldest summaries dropped
    for _ in range(15):
        box.put(ALERT, "alert/noise", blob)
    s = box.stats()
    # Since issue 18 the hard cap bounds the files on disk (database + WAL), not only the payload bytes.
    assert s["summaries"] == 0 and s["bytes"] <= 20_000 and s["disk"] <= 20_000
    assert s["alerts_dropped"] >= 3 and s["alerts"] + s["alerts_dropped"] == 23
    kept = [r.id for r in box.pending(limit=100)]
    assert kept == list(range(kept[0], 32))  # the oldest went, the newest are all there
