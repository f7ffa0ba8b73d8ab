"""Rollout planning and gates: pure functions, no servers (fleet/rollout/plan.py, gates.py, messages.py)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.rollout import gates, plan
from fleet.rollout.gates import Bounds, PoleFigures, StageFigures


# ------------------------------------------------------------------ plan

def test_stages_parse_percentages_and_refuse_what_is_not_increasing():
    assert plan.parse_stages("1%,10%,50%,100%") == [0.01, 0.1, 0.5, 1.0]
    assert plan.parse_stages("0.05, 0.5, 1") == [0.05, 0.5, 1.0]
    for bad in ("10%,5%", "0%,100%", "x", "150%", ""):
        with pytest.raises(plan.PlanError):
            plan.parse_stages(bad)


def test_canaries_are_spread_over_sites():
    devices = [(f"p{s}-{i}", f"site-{s}") for s in range(20) for i in range(50)]  # 1,000 poles, 20 sites
    out = plan.assign(devices, [0.01, 0.1, 0.5, 1.0], seed=3)
    canaries = [d for d, s, k in out if k == 0]
    assert len(canaries) == 10
    assert len({s for d, s, k in out if k == 0}) == 10  # ten canaries from ten different sites
    assert [sum(1 for *_, k in out if k <= j) for j in range(4)] == [10, 100, 500, 1000]
    assert out == plan.assign(list(reversed(devices)), [0.01, 0.1, 0.5, 1.0], seed=3)  # input order does not matter


@given(n=st.integers(1, 3000), stages=st.lists(st.floats(0.001, 1.0), min_size=1, max_size=6, unique=True))
@settings(max_examples=200, deadline=None)
def test_stage_sizes_grow_by_at_least_one_and_never_pass_the_fleet(n, stages):
    stages = sorted(stages)
    sizes = plan.stage_sizes(n, stages)
    assert all(1 <= s <= n for s in sizes)
    assert all(b >= a for a, b in zip(sizes, sizes[1:]))
    assert all(b > a for a, b in zip(sizes, sizes[1:]) if a < n)
    if stages[-1] == 1.0:
        assert sizes[-1] == n


@given(n=st.integers(1, 400), sites=st.integers(1, 30), seed=st.integers(0, 10))
@settings(max_examples=100, deadline=None)
def test_every_pole_is_assigned_once(n, sites, seed):
    devices = [(f"d{i}", f"s{i % sites}") for i in range(n)]
    out = plan.assign(devices, [0.01, 0.1, 0.5, 1.0], seed)
    assert sorted(d for d, _, _ in out) == sorted(d for d, _ in devices)


# ------------------------------------------------------------------ gates

def _poles(k: int, n: int = 300, **kw) -> list[PoleFigures]:
    base = {"agr": 0.96, "cf": 0.85, "acf": 0.86, "p95_active": 3.0, "p95_cand": 3.1, "err": 0}
    return [PoleFigures(device=f"d{i}", n=n, **{**base, **kw}) for i in range(k)]


def test_a_good_stage_passes_and_each_bad_figure_fires_its_own_gate():
    b = Bounds(max_disagreement=0.1)
    assert gates.shadow_breaches(StageFigures(shadowing=10, reports=_poles(10)), b) == []
    cases = {"agreement": {"agr": 0.8}, "confidence": {"cf": 0.6}, "latency": {"p95_cand": 9.0},
             "errors": {"err": 30}}
    for gate, kw in cases.items():
        fired = gates.shadow_breaches(StageFigures(shadowing=10, reports=_poles(10, **kw)), b)
        assert [x.gate for x in fired] == [gate], (gate, fired)
        assert fired[0].value > fired[0].bound


def test_not_enough_evidence_waits_then_fails_when_the_time_is_up():
    b = Bounds(min_windows=300, min_reporting=0.8)
    fig = StageFigures(shadowing=10, reports=_poles(5) + _poles(5, n=100))
    assert not gates.ready(fig, b)
    assert gates.shadow_breaches(fig, b, expired=False) == []
    assert [x.gate for x in gates.shadow_breaches(fig, b, expired=True)] == ["evidence"]
    assert gates.ready(StageFigures(shadowing=10, reports=_poles(8) + _poles(2, n=10)), b)


def test_install_failures_and_poles_gone_offline_fire_at_any_time():
    b = Bounds(max_install_failures=0.0, max_offline=0.1)
    assert gates.live_breaches(StageFigures(sent=10, failed=0, reached=10, offline_after=1), b) == []
    assert [x.gate for x in gates.live_breaches(StageFigures(sent=10, failed=1, reached=9), b)] == ["install"]
    assert [x.gate for x in gates.live_breaches(StageFigures(sent=10, reached=10, offline_after=2), b)] == ["offline"]


@given(agr=st.floats(0, 1), bound=st.floats(0.01, 0.5), k=st.integers(1, 20))
@settings(max_examples=200, deadline=None)
def test_the_agreement_gate_fires_exactly_when_disagreement_exceeds_its_bound(agr, bound, k):
    fired = gates.shadow_breaches(StageFigures(shadowing=k, reports=_poles(k, agr=agr)), Bounds(max_disagreement=bound))
    assert ("agreement" in [x.gate for x in fired]) == (1 - round(agr, 4) > bound + 1e-9)


@given(ratios=st.lists(st.floats(0.5, 5.0), min_size=1, max_size=15))
@settings(max_examples=100, deadline=None)
def test_latency_is_the_median_pole_ratio(ratios):
    reports = [PoleFigures(device=f"d{i}", n=300, agr=1.0, p95_active=2.0, p95_cand=2.0 * r)
               for i, r in enumerate(ratios)]
    s = gates.summarise(reports, 300)
    srt = sorted(ratios)
    mid = len(srt) // 2
    median = srt[mid] if len(srt) % 2 else (srt[mid - 1] + srt[mid]) / 2
    assert s["latency_ratio"] == pytest.approx(median, abs=1e-3)


def test_default_disagreement_comes_from_the_manifests_figures():
    bound, why = gates.default_disagreement({"int8_cpu": {"agreement": 0.93, "accuracy": 0.77}}, None)
    assert bound == pytest.approx(0.09) and "agreement" in why
    bound, why = gates.default_disagreement({"int8_cpu": {"accuracy": 0.9}}, {"int8_cpu": {"accuracy": 0.8}})
    assert bound == pytest.approx(0.32) and "accuracy" in why
    assert gates.default_disagreement({}, None)[0] == gates.DEFAULT_DISAGREEMENT
    shipped = json.load(open("agent/models/noise/manifest.json"))["metrics"]
    assert 0.02 <= gates.default_disagreement(shipped, shipped)[0] <= 0.5


# ------------------------------------------------------------------ messages

def test_commands_are_the_same_bytes_every_time_and_signed_as_the_pole_checks(tmp_path):
    from agent.control.signing import (generate_keypair, load_private_key, load_public_key, rollback_message,
                                       shadow_message, verify_bytes)
    from fleet.rollout.messages import Builder

    priv, pub = generate_keypair(tmp_path / "k.key")
    ro = {"id": 7, "task": "noise", "bundle_sha256": "a" * 64, "model_sha256": "b" * 64, "release": 5,
          "base_bundle_sha256": "c" * 64, "base_model_sha256": "d" * 64,
          "settings": {"windows": 300, "minutes": 30, "report_every": 100}}
    one = Builder(ro, load_private_key(priv), "http://city:8080")
    two = Builder(ro, load_private_key(priv), "http://city:8080")
    for kind in "spamb":
        assert one.build(kind, "orin-0001") == two.build(kind, "orin-0001")
    keys = [load_public_key(pub)]
    p = json.loads(one.build("p", "orin-0001").payload)
    assert verify_bytes(shadow_message("promote", "noise", "b" * 64), p["sig"], keys, "promote")
    b = json.loads(one.build("b", "orin-0001").payload)
    assert b["url"] == "http://city:8080/bundles/" + "c" * 64 and b["sha256"] == "c" * 64
    assert verify_bytes(rollback_message("noise", 5, "d" * 64), b["rollback"], keys, "rollback")
    s = json.loads(one.build("s", "orin-0001").payload)
    assert s == {"id": "ro7-s-orin-0001", "task": "noise", "url": "http://city:8080/bundles/" + "a" * 64,
                 "sha256": "a" * 64, "windows": 300, "minutes": 30, "report_every": 100}
