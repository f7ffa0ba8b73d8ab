"""What ``roadside demo`` saw upstream, as numbers (``summarise``) and as text (``format_summary``, ``alert_line``).

Everything here is computed from the messages the city-side subscriber received and the
bytes the replay sent: nothing is assumed. Sizes are MQTT payload + topic bytes (the
framing, a few bytes a message, is left out on both sides). Latency is an alert's arrival
at the subscriber minus its ``ts`` (the capture time of the end of the window that fired);
alerts of tasks fed by the loop-detector replay are left out of it, because their ``ts`` is the
detector data's own time (the 2012 recording), not the time of the replay.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

DATA_TIME_INPUT = "detector"  # the scene replays this feed at the recording's own timestamps


def in_data_time(kind: str) -> bool:
    """Whether alerts of ``kind`` carry the replayed recording's time (not the replay's): by what the task reads."""
    from agent.tasks import registry

    try:
        return registry.get(kind).consumes == DATA_TIME_INPUT
    except KeyError:
        return False


@dataclass
class DemoResult:
    seconds: float  # stream seconds played
    started: float  # wall clock (s) when the replay started
    sent: dict[str, int]  # raw sensor payload bytes by kind
    messages: list[tuple[float, str, bytes]]  # (arrival wall clock s, topic, payload) upstream
    scene: list[str] = field(default_factory=list)
    synthetic: list[str] = field(default_factory=list)
    agent: dict = field(default_factory=dict)  # rss_peak_mb, cpu_s, pid
    config: dict = field(default_factory=dict)  # level_period_s, heartbeat_s, calibration_db
    interrupted: bool = False


def _kind(topic: str) -> str:
    """alert | summary | health | state | cmd from ``{prefix}/{site}/{device}/...``."""
    parts = topic.split("/")
    return "alert" if "alert" in parts else parts[-1] if parts[-1] in ("summary", "health", "state") else "other"


def _decoded(result: DemoResult, kind: str) -> list[tuple[float, dict, int]]:
    out = []
    for t, topic, payload in result.messages:
        if _kind(topic) == kind and payload:
            try:
                out.append((t, json.loads(payload), len(payload) + len(topic)))
            except ValueError:
                continue
    return out


def energy_mean(levels: list[float], weights: list[float]) -> float:
    """LAeq over several periods: the duration-weighted mean of their energies, in dB."""
    ok = [(lv, w) for lv, w in zip(levels, weights) if lv is not None and math.isfinite(lv) and w > 0]
    if not ok:
        return float("nan")
    return 10 * math.log10(sum(w * 10 ** (lv / 10) for lv, w in ok) / sum(w for _, w in ok))


def summarise(result: DemoResult) -> dict:
    alerts = _decoded(result, "alert")
    by_kind: dict[str, Counter] = {}
    for _, a, _ in alerts:
        by_kind.setdefault(a["k"], Counter())[a["c"]] += 1
    lat = [t * 1000 - a["ts"] for t, a, _ in alerts if not in_data_time(a["k"]) and "r" not in a]
    summaries = [a for _, a, _ in _decoded(result, "summary")]
    up = Counter()
    for _, topic, payload in result.messages:
        up[_kind(topic)] += len(payload) + len(topic)
    raw = sum(result.sent.values())
    health = _decoded(result, "health")
    return {
        "seconds": result.seconds,
        "alerts": {k: dict(c) for k, c in sorted(by_kind.items())},
        "alert_count": len(alerts),
        "alert_bytes_max": max((len(p) for _, tp, p in result.messages if _kind(tp) == "alert"), default=0),
        "levels": [{"t": s["ts"] / 1000 - result.started if "ts" in s else None,
                    **{k: s.get(k) for k in ("sec", "laeq", "lafmax", "l10", "l90", "lim", "s")}} for s in summaries],
        "level_overall": {
            "laeq": energy_mean([s.get("laeq") for s in summaries], [s.get("sec", 0) for s in summaries]),
            "lafmax": max((s["lafmax"] for s in summaries if s.get("lafmax") is not None), default=float("nan"))},
        "bytes_upstream": dict(up), "bytes_upstream_total": sum(up.values()),
        "bytes_raw": dict(result.sent), "bytes_raw_total": raw,
        "upstream_over_raw": sum(up.values()) / raw if raw else float("nan"),
        "message_sizes": {k: float(np.mean([n for *_, n in _decoded(result, k)])) for k in ("alert", "summary", "health")
                          if _decoded(result, k)},
        "latency_ms": {"n": len(lat), **({"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
                                          "max": float(max(lat))} if lat else {})},
        "inference": health[-1][1].get("tasks", {}) if health else {},
        "agent": dict(result.agent),
        "synthetic": list(result.synthetic),
        "interrupted": result.interrupted,
    }


def _db(v) -> str:
    return "  n/a" if v is None or not math.isfinite(v) else f"{v:5.1f}"


def alert_line(arrival: float, t0: float, topic: str, payload: bytes) -> str | None:
    """One live line for an upstream message worth showing (alerts and level summaries), else None.

    ``arrival`` is the wall clock (s) it arrived at; ``t0`` when the replay started.
    """
    kind, t = _kind(topic), arrival - t0
    if kind not in ("alert", "summary"):
        return None
    try:
        a = json.loads(payload)
    except ValueError:
        return f"  [{t:6.1f} s] malformed upstream message on {topic}"
    if kind == "summary":
        return (f"  [{t:6.1f} s] level    LAeq {_db(a.get('laeq'))}  LAFmax {_db(a.get('lafmax'))}  "
                f"L10 {_db(a.get('l10'))}  L90 {_db(a.get('l90'))} dB(A) over {a.get('sec', 0):.0f} s")
    m = a.get("m", {})
    metrics = ", ".join(f"{k} {v}" for k, v in m.items())
    if in_data_time(a["k"]):
        detail = f"{metrics} at data time {_utc(a['ts'])}".strip()
    elif metrics:  # a rule's own figures (a sound level limit, say) say more than the latency
        detail = metrics
    else:
        detail = f"{arrival * 1000 - a['ts']:.0f} ms after the window's end"
    return (f"  [{t:6.1f} s] ALERT    {a['k']:10s} {a['c']:17s} p {a['p']:.2f}  {a['s']:8s} {detail}  "
            f"({len(payload)} B)")


def _utc(ms: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%a %H:%M")


def format_summary(s: dict, cfg: dict) -> str:
    lines = [f"summary: {s['seconds']:.0f} s of sensor data"
             + (" (SYNTHETIC: " + ", ".join(s["synthetic"]) + ")" if s["synthetic"] else " (real recordings)")
             + (", stopped early by Ctrl-C" if s["interrupted"] else "")]
    lines.append(f"  alerts upstream: {s['alert_count']}" + ("" if s["alerts"] else " (none)"))
    for kind, classes in s["alerts"].items():
        lines.append(f"    {kind:11s} " + ", ".join(f"{c} {n}" for c, n in sorted(classes.items(), key=lambda x: -x[1])))
    lv = s["levels"]
    lines.append(f"  noise levels, dB(A) (demo calibration dBFS + {cfg.get('calibration_db', 0):.0f}), "
                 f"{len(lv)} level summar{'y' if len(lv) == 1 else 'ies'} of {cfg.get('level_period_s', '?')} s:")
    if not lv:
        lines.append("       none: the scene was shorter than one period")
    else:
        lines.append("       period end    LAeq  LAFmax    L10    L90")
        for x in lv:
            end = f"{x['t']:6.1f} s" if x.get("t") is not None else ""
            lines.append(f"       {end:>10s}   {_db(x['laeq'])}   {_db(x['lafmax'])}  {_db(x['l10'])}  {_db(x['l90'])}")
        o = s["level_overall"]
        lines.append(f"       all periods: LAeq {_db(o['laeq']).strip()} (energy mean), LAFmax {_db(o['lafmax']).strip()}")
    up, raw = s["bytes_upstream"], s["bytes_raw"]
    lines.append(f"  bytes upstream {s['bytes_upstream_total']:,} ("
                 + ", ".join(f"{k} {v:,}" for k, v in sorted(up.items())) + ") vs raw sensor input "
                 f"{s['bytes_raw_total']:,} (" + ", ".join(f"{k} {v:,}" for k, v in sorted(raw.items())) + ")")
    if s["bytes_raw_total"]:
        share = up.get("health", 0) / s["bytes_upstream_total"] if s["bytes_upstream_total"] else 0.0
        lines.append(f"    upstream / raw = {100 * s['upstream_over_raw']:.2f} % (payload + topic; "
                     f"{100 * share:.0f} % of upstream is the heartbeat, every {cfg.get('heartbeat_s', '?')} s here)")
    lat = s["latency_ms"]
    if lat["n"]:
        lines.append(f"  alert latency (window end -> city subscriber): p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms "
                     f"(n={lat['n']}; congestion alerts carry the data's own time and are left out)")
    else:
        lines.append("  alert latency: no alert to measure")
    for task, st in s["inference"].items():
        if "p50_ms" in st:
            lines.append(f"  {task} inference: {st['windows']} windows, p50 {st['p50_ms']:.2f} ms, p95 {st['p95_ms']:.2f} ms")
    ag = s["agent"]
    if ag.get("rss_peak_mb"):
        lines.append(f"  agent process: peak RSS {ag['rss_peak_mb']:.0f} MB, CPU {ag.get('cpu_s', 0):.1f} s")
    return "\n".join(lines)
