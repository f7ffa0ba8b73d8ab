"""Shadow mode (docs/rollouts.md, the pole's side): a candidate beside the active model, then promote or abort.

End to end with a real mosquitto and the agent in-process: the "good" candidate is the shipped
noise model re-saved with another doc string (same weights, another sha256) and release 2; the
"bad" one has two rows of its final layer swapped (the active model's top class on the test
tone and ``siren``), so it disagrees on every window and, were it ever allowed to alert, would
call every window a siren. Statistics and bounds are also checked on their own, without MQTT.
"""

from __future__ import annotations

import base64
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from agent.alerts import MAX_BYTES, Origin, encode_shadow
from agent.config import load_config
from agent.control.bundle_io import make_bundle
from agent.control.shadow import _check_input
from agent.control.signing import shadow_message, sign_bytes
from agent.payloads import encode_audio
from agent.runtime import Agent
from agent.shadow import WARMUP, Candidate, Comparison, Shadows, js_divergence
from agent.sources import Message
from agent_fixtures import Broker, Collector, write_agent_config
from ops_fixtures import base_topic, keypair, publish, rehash, send_audio, signed_copy, tone, wait_until
from upstream_schema import check_upstream

SHADOW_CFG = {"min_report_every": 1}


# --------------------------------------------------------------------------- helpers

def resaved(release: int, doc: str = "shadow candidate"):
    """An edit for ``signed_copy``: the same weights in other bytes (another sha256), with ``release``."""
    def edit(folder: Path) -> None:
        import onnx

        model = onnx.load(str(folder / "model.onnx"))
        model.doc_string = doc
        onnx.save(model, str(folder / "model.onnx"))
        rehash(folder, release)
    return edit


def swapped_head(release: int, i: int, j: int):
    """An edit for ``signed_copy``: logits ``i`` and ``j`` exchanged (rows of the last Gemm's weight and bias)."""
    def edit(folder: Path) -> None:
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(folder / "model.onnx"))
        last = model.graph.node[-1]
        assert last.op_type == "Gemm" and last.output[0] == "logits"
        for init in model.graph.initializer:
            if init.name in last.input[1:]:  # weight (10, 512) with transB, bias (10,): row k makes logit k
                a = numpy_helper.to_array(init).copy()
                a[[i, j]] = a[[j, i]]
                init.CopyFrom(numpy_helper.from_array(a, init.name))
        onnx.save(model, str(folder / "model.onnx"))
        rehash(folder, release)
    return edit


def shadow_command(cmd_id: str, folder: Path, **extra) -> bytes:
    bundle = base64.b64encode(make_bundle(folder)).decode()
    return json.dumps({"id": cmd_id, "task": "noise", "bundle": bundle, **extra}).encode()


def decision(cmd_id: str, action: str, sha: str, key: Path | None, signed_action: str | None = None) -> bytes:
    sig = sign_bytes(shadow_message(signed_action or action, "noise", sha), key) if key else None
    return json.dumps({"id": cmd_id, "task": "noise", "sha256": sha, **({"sig": sig} if sig else {})}).encode()


def tone_top_label(agent: Agent, seconds: float = 4.0) -> str:
    """The active model's top-1 label on the test tone (computed with onnxruntime, outside the agent)."""
    import onnxruntime

    task = agent.taskset.named["noise"]
    x = task.features(tone(seconds)).reshape(task.model.example_shape).astype(np.float32)
    sess = onnxruntime.InferenceSession(str(task.model.contract.model_path), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: x})[0][0]
    return task.model.contract.labels[int(np.argmax(logits))]


# ---------------------------------------------------------------------- MQTT rig

class Rig:
    def __init__(self, tmp_path: Path, noise_model: Path, shadow: dict):
        from ops_fixtures import InProcessAgent

        self.tmp, self.model = tmp_path, noise_model
        self.broker = Broker(tmp_path / "broker")
        self.observer = Collector(self.broker.port)
        self.private, public = keypair(tmp_path / "keys")
        cfg = write_agent_config(tmp_path / "agent", noise_model, self.broker.port, self.broker.port,
                                 **{"updates": {"trusted_keys": [str(public)], "shadow": shadow}})
        self.running = InProcessAgent(cfg)
        self.agent = self.running.agent
        wait_until(lambda: self.states(), 20, "the agent online")
        self.running.wait_sensors()
        self.seq = 0

    def states(self) -> list[dict]:
        boot = self.agent.origin.boot
        return [s for s in self.observer.payloads("/state") if s.get("online") and s.get("boot") == boot]

    def command(self, name: str, cmd_id: str, payload: bytes, timeout: float = 60) -> dict:
        publish(self.broker.port, f"{base_topic()}/cmd/{name}", payload)
        return self.observer.wait_for(lambda c: [a for a in c.payloads(f"/cmd/{name}/ack") if a["id"] == cmd_id],
                                      timeout, f"the answer to {cmd_id}")[-1]

    def reports(self) -> list[bytes]:
        topic = f"{base_topic()}/shadow"
        with self.observer._lock:
            return [p for _, t, p, _ in self.observer.messages if t == topic]

    def check_upstream(self) -> set:
        """Every message the pole sent (not the commands the test sent it) meets the upstream schema
        and privacy rules (tests/upstream_schema.py); the kinds seen."""
        with self.observer._lock:
            sent = [(t, p) for _, t, p, _ in self.observer.messages if "/cmd/" not in t or t.endswith("/ack")]
        return {check_upstream(t, p) for t, p in sent}

    def audio(self, seconds: float) -> None:
        """Sensor audio; windows follow at the hop (1 s) once the first 4 s window is full."""
        self.seq += send_audio(self.broker.port, tone(seconds), seq0=self.seq)

    def windows(self) -> int:
        return self.agent.health.tasks["noise"].windows

    def close(self) -> None:
        self.running.stop()
        self.observer.close()
        self.broker.stop()


@pytest.fixture
def rig(tmp_path, noise_model):
    made: list[Rig] = []

    def make(**shadow) -> Rig:
        made.append(Rig(tmp_path, noise_model, {**SHADOW_CFG, **shadow}))
        return made[-1]

    yield make
    for r in made:
        r.close()


def test_a_good_candidate_shadows_with_full_agreement_then_a_signed_promote_applies_it(rig, tmp_path,
                                                                                       noise_model):
    r = rig(cpu_share=10.0)  # two CPUs shared with other tests: timing noise must not skip windows here
    active_sha = r.agent.taskset.models["noise"]["sha256"]
    good = signed_copy(noise_model.parent, tmp_path / "good", r.private, edit=resaved(2))

    ack = r.command("shadow", "s1", shadow_command("s1", good, windows=12, report_every=5))

    assert ack["ok"] and ack["status"] == "shadowing", ack
    cand_sha = ack["model"]["sha256"]
    assert cand_sha != active_sha and ack["model"]["release"] == 2 and ack["model"]["task"] == "noise"
    state = r.observer.wait_for(lambda c: [s for s in r.states() if "shadow" in s], 10, "state with shadow")[-1]
    assert state["shadow"]["noise"]["sha256"] == cand_sha and state["shadow"]["noise"]["release"] == 2
    assert state["models"]["noise"]["sha256"] == active_sha  # shadowing changes nothing that runs

    r.audio(20.0)  # 17 windows: more than the 12 asked for
    wait_until(lambda: any(json.loads(p)["end"] for p in r.reports()), 60, "the final shadow report")
    reports = [json.loads(p) for p in r.reports()]
    assert all(len(p) <= MAX_BYTES for p in r.reports())
    assert [x["n"] for x in reports] == [5, 10, 12] and [x["end"] for x in reports] == [0, 0, 1]
    final = reports[-1]
    assert final["k"] == "noise" and final["cs"] == cand_sha[:16] and final["as"] == active_sha[:16]
    assert final["agr"] == 1.0 and final["div"] == 0.0 and final["err"] == 0 and final["sk"] == 0
    assert final["cf"] == pytest.approx(final["acf"], abs=1e-3) and len(final["p95"]) == 2
    assert final["id"].startswith(f"{r.agent.origin.device}:{r.agent.origin.boot}:")

    # Bounds: the shadow stopped at 12 windows; more audio is scored by the active model only.
    before = r.windows()
    r.audio(5.0)
    wait_until(lambda: r.windows() >= before + 5, 30, "windows after the shadow ended")
    assert r.agent.shadows.get("noise").stats.n == 12 and len(r.reports()) == 3
    health = r.observer.wait_for(lambda c: [h for h in c.payloads("/health")
                                            if h.get("shadow", {}).get("noise", {}).get("n") == 12], 10, "health")[-1]
    assert health["shadow"]["noise"]["sk"] == 0 and health["shadow"]["noise"]["cpu_ms"] > 0
    assert health["shadow"]["noise"]["rss_mb"] >= 0

    # Promote: unsigned, signed by a stranger, an abort signature, the wrong candidate: all refused.
    rogue, _ = keypair(tmp_path / "rogue", "rogue")
    for cmd_id, payload, stage in [
        ("p-unsigned", decision("p-unsigned", "promote", cand_sha, None), "verify"),
        ("p-rogue", decision("p-rogue", "promote", cand_sha, rogue), "verify"),
        ("p-abortsig", decision("p-abortsig", "promote", cand_sha, r.private, signed_action="abort"), "verify"),
        ("p-other", decision("p-other", "promote", active_sha, r.private), "shadow"),
    ]:
        ack = r.command("promote", cmd_id, payload)
        assert not ack["ok"] and ack["status"] == "refused" and ack["stage"] == stage, ack
    assert r.agent.taskset.models["noise"]["sha256"] == active_sha

    ack = r.command("promote", "p1", decision("p1", "promote", cand_sha, r.private))

    assert ack["ok"] and ack["status"] == "applied" and ack["model"]["sha256"] == cand_sha, ack
    assert ack["model"]["release"] == 2
    state = r.observer.wait_for(lambda c: [s for s in r.states()
                                           if s["models"]["noise"]["sha256"] == cand_sha], 10, "promoted state")[-1]
    assert "shadow" not in state and state["models"]["noise"]["src"].startswith("update:")
    assert r.agent.installed.highest("noise") == 2
    before = r.windows()
    r.audio(6.0)
    wait_until(lambda: r.windows() > before, 30, "the promoted model scoring windows")

    # Replay: a shadow whose release is not newer than the one applied is refused; the active one is unchanged.
    old = signed_copy(noise_model.parent, tmp_path / "old", r.private, edit=resaved(2, "another release 2"))
    ack = r.command("shadow", "s-replay", shadow_command("s-replay", old))
    assert ack["status"] == "refused" and ack["stage"] == "verify" and "not newer" in ack["reason"], ack
    ack = r.command("shadow", "s-same", shadow_command("s-same", good))
    assert ack["status"] == "unchanged", ack
    assert r.agent.shadows.get("noise") is None
    assert {"shadow", "state", "health", "ack"} <= r.check_upstream()


def test_a_bad_candidate_disagrees_never_alerts_and_abort_removes_it(rig, tmp_path, noise_model):
    r = rig()
    active_sha = r.agent.taskset.models["noise"]["sha256"]
    labels = list(r.agent.taskset.named["noise"].model.contract.labels)
    top = tone_top_label(r.agent)
    other = "siren" if top != "siren" else "dog_bark"  # an alerting class in firmware_configs/test.yaml
    bad = signed_copy(noise_model.parent, tmp_path / "bad", r.private,
                      edit=swapped_head(2, labels.index(top), labels.index(other)))

    ack = r.command("shadow", "s-bad", shadow_command("s-bad", bad, windows=10, report_every=5))
    assert ack["status"] == "shadowing", ack
    cand_sha = ack["model"]["sha256"]
    r.audio(16.0)
    wait_until(lambda: any(json.loads(p)["end"] for p in r.reports()), 60, "the final shadow report")

    final = json.loads(r.reports()[-1])
    assert final["n"] == 10 and final["agr"] < 0.5 and final["div"] > 0.5, final
    # Every window, the candidate called the tone ``other`` (an alerting class) with the active model's
    # confidence; had it reached a rule, there would be alerts by it, or of that class.
    alerts = r.observer.payloads("/alert/")
    assert not [a for a in alerts if a.get("ms") == cand_sha[:16] or a.get("c") == other], alerts
    folder = r.agent.shadows.get("noise").staged.folder
    assert folder.is_dir()

    ack = r.command("abort", "a-unsigned", decision("a-unsigned", "abort", cand_sha, None))
    assert ack["status"] == "refused" and ack["stage"] == "verify", ack
    ack = r.command("abort", "a1", decision("a1", "abort", cand_sha, r.private))

    assert ack["ok"] and ack["status"] == "aborted" and ack["model"]["sha256"] == cand_sha, ack
    assert r.agent.shadows.get("noise") is None and not folder.exists()
    assert r.agent.taskset.models["noise"]["sha256"] == active_sha and r.agent.installed.highest("noise") == 0
    r.observer.wait_for(lambda c: "shadow" not in r.states()[-1], 10, "the state without shadow")
    again = r.command("abort", "a2", decision("a2", "abort", cand_sha, r.private))
    assert again["status"] == "refused" and again["stage"] == "shadow", again


def test_the_cpu_budget_skips_candidate_windows(rig, tmp_path, noise_model):
    r = rig(cpu_share=0.05)  # the candidate (as costly as the active model) may use 5 % of its time
    good = signed_copy(noise_model.parent, tmp_path / "good", r.private, edit=resaved(3))
    assert r.command("shadow", "s-cpu", shadow_command("s-cpu", good, windows=8))["status"] == "shadowing"

    r.audio(15.0)  # 12 windows
    wait_until(lambda: r.windows() >= 12, 60, "12 windows")
    cand = r.agent.shadows.get("noise")
    wait_until(lambda: cand.stats.n + cand.stats.sk >= 12, 10, "every window compared or skipped")
    assert cand.stats.sk >= 8 and 1 <= cand.stats.n <= 4, (cand.stats.n, cand.stats.sk)
    assert not cand.ended  # skipped windows do not count towards windows


# --------------------------------------------------------------- without MQTT

def make_agent(tmp_path: Path, noise_model: Path, **shadow) -> Agent:
    """A real agent, not running: commands handled directly, audio fed to ``process``."""
    key, public = keypair(tmp_path / "keys")
    path = write_agent_config(tmp_path / "agent", noise_model, 1, 1, **{"updates": {
        "trusted_keys": [str(public)], "shadow": {**SHADOW_CFG, **shadow}}})
    a = Agent(load_config(path), path)
    a.test_key = key
    return a


@pytest.fixture
def agent(tmp_path, noise_model):
    a = make_agent(tmp_path, noise_model)
    yield a
    a.outbox.close()


def feed(agent: Agent, seconds: float, seq0: int = 0) -> int:
    samples, n = tone(seconds), 1600
    for k, i in enumerate(range(0, samples.size - n + 1, n)):
        payload = encode_audio(samples[i:i + n], 16000, seq0 + k, int(time.time() * 1e6) + k * 100_000)
        agent.process(Message("audio", "mic0", payload, time.time() * 1000))
    return samples.size // n


def stored_reports(agent: Agent) -> list[dict]:
    return [json.loads(row.payload) for row in agent.outbox.pending(0, 1000) if row.topic == "shadow"]


def test_reports_are_stored_in_the_outbox_and_the_windows_bound_ends_the_shadow(agent, tmp_path, noise_model):
    good = signed_copy(noise_model.parent, tmp_path / "good", agent.test_key, edit=resaved(2))
    ack = agent.commands.handle("shadow", shadow_command("s1", good, windows=3, report_every=2))
    assert ack["status"] == "shadowing", ack

    feed(agent, 10.0)  # 7 windows

    reports = stored_reports(agent)
    assert [(x["n"], x["end"]) for x in reports] == [(2, 0), (3, 1)]
    assert agent.health.tasks["noise"].windows == 7  # the candidate's inferences are not the task's windows


def test_the_minutes_bound_and_a_replacing_shadow_end_the_old_one(agent, tmp_path, noise_model):
    first = signed_copy(noise_model.parent, tmp_path / "a", agent.test_key, edit=resaved(2, "a"))
    second = signed_copy(noise_model.parent, tmp_path / "b", agent.test_key, edit=resaved(2, "b"))
    assert agent.commands.handle("shadow", shadow_command("s1", first, minutes=0.001))["status"] == "shadowing"
    old = agent.shadows.get("noise")
    time.sleep(0.1)
    agent.shadows.tick()
    assert old.ended and stored_reports(agent)[-1]["end"] == 1

    assert agent.commands.handle("shadow", shadow_command("s2", second))["status"] == "shadowing"
    assert agent.shadows.get("noise") is not old and not old.staged.folder.exists()


@pytest.mark.parametrize("bound, word", [({"max_model_bytes": 1_000}, "max_model_bytes"),  # the model: 2.9 MB
                                         ({"max_rss_mb": 1e-6}, "max_rss_mb")])
def test_a_candidate_over_its_size_or_memory_bound_is_refused(tmp_path, noise_model, bound, word):
    agent = make_agent(tmp_path, noise_model, **bound)
    try:
        good = signed_copy(noise_model.parent, tmp_path / "good", agent.test_key, edit=resaved(2))
        ack = agent.commands.handle("shadow", shadow_command("s1", good))
        assert ack["status"] == "refused" and ack["stage"] == "shadow" and word in ack["reason"], ack
        assert agent.shadows.get("noise") is None
        assert not [p for p in (agent.state_dir / "models" / "noise").iterdir() if p.is_dir()]
    finally:
        agent.outbox.close()


def test_a_candidate_must_take_the_active_models_input():
    def task(frontend: dict, shape: tuple):
        model = type("M", (), {"contract": type("C", (), {"frontend": frontend})(), "example_shape": shape})()
        return type("T", (), {"model": model})()

    same = task({"kind": "logmel", "n_mels": 64}, (1, 1, 64, 101))
    assert _check_input(same, task({"kind": "logmel", "n_mels": 64}, (1, 1, 64, 101))) is None
    assert "front-end" in _check_input(same, task({"kind": "logmel", "n_mels": 128}, (1, 1, 128, 101)))
    assert "input" in _check_input(same, task({"kind": "logmel", "n_mels": 64}, (1, 64, 101)))
    assert "no active model" in _check_input(None, same)


def test_statistics_are_those_the_contract_names():
    assert js_divergence(Counter(a=5), Counter(a=5)) == 0.0
    assert js_divergence(Counter(a=5), Counter(b=5)) == pytest.approx(1.0)
    assert js_divergence(Counter(a=1, b=1), Counter(a=1)) == pytest.approx(0.3113, abs=1e-4)
    s = Comparison()
    for _ in range(WARMUP):  # a cold candidate's first runs: compared, but not timed
        s.add(("siren", 0.9, 2.0), ("siren", 0.9, 90.0))
    assert s.figures()["p95"] == [None, None]
    s.add(("siren", 0.9, 2.0), ("siren", 0.7, 3.0))
    s.add(("dog_bark", 0.5, 2.0), ("siren", 0.9, 5.0))
    f = s.figures()
    n = WARMUP + 2
    assert f["n"] == n and f["agr"] == round((n - 1) / n, 3)
    assert f["acf"] == round((0.9 * (n - 1) + 0.5) / n, 3) and f["cf"] == round((0.9 * (n - 2) + 0.7 + 0.9) / n, 3)
    assert f["p95"][0] == 2.0 and 4.0 < f["p95"][1] <= 5.0


def test_a_report_with_the_longest_ids_and_figures_fits_256_bytes():
    origin = Origin("d" * 32, 999_999, "f" * 16)
    report = {"k": "congestion", "cs": "a" * 16, "as": "b" * 16, "n": 1_000_000, "sk": 1_000_000,
              "agr": 0.999, "cf": 0.999, "acf": 0.999, "div": 0.999, "p95": [99999.9, 99999.9], "err": 1_000_000,
              "end": 1}
    out = encode_shadow(origin, 10**12, ts_ms=int(time.time() * 1000), report=report)
    assert len(out) + len(b',"r":1') - 1 <= MAX_BYTES, len(out)  # room for the replay marker
    assert json.loads(out)["n"] == 1_000_000 and json.loads(out)["end"] == 1
    usual = json.loads(encode_shadow(Origin("orin-0001", 12, "f" * 16), 3460, ts_ms=0, report={
        **report, "agr": 0.9134, "p95": [3.14, 2.25]}))
    assert usual["agr"] == 0.9134 and usual["p95"] == [3.14, 2.25] and usual["as"] == "b" * 16  # nothing shed


def test_a_failing_candidate_counts_errors_and_the_active_result_is_untouched():
    class Fake:  # a task whose model returns the given logits
        def __init__(self, run):
            self.model = type("M", (), {})()
            self.model.contract = type("C", (), {"labels": ("a", "b")})()
            self.model.info = type("I", (), {"sha256": "c" * 64})()
            self.model.backend = type("B", (), {"run": staticmethod(run)})()

    def boom(x):
        raise RuntimeError("candidate broke")

    emitted: list[dict] = []
    staged = type("S", (), {"task": "noise", "sha": "d" * 64, "release": 2})()
    shadows = Shadows(lambda name: Fake(lambda x: np.array([[2.0, 0.0]])), emitted.append, lambda: None)
    shadows.install(Candidate(staged, Fake(boom), 5, time.monotonic() + 60, 1, 2.0, 0.0, "c" * 64))
    for _ in range(3):
        shadows.observe("noise", np.zeros((1, 1)), np.array([[2.0, 0.0]]), 1.0)
    assert shadows.get("noise").stats.err == 3 and shadows.get("noise").stats.n == 0 and not emitted


# ----------------------------------------------------------- what it costs the pole

def measure_overhead(tmp_path: Path, noise_model: Path, seconds: float = 60.0) -> dict:
    """Process CPU ms per window and resident memory, the same audio without, with, and again without a candidate."""
    from agent.health import ProcessStats

    agent = make_agent(tmp_path, noise_model, cpu_share=10.0)
    try:
        seq, out = feed(agent, 6.0), {"rss_start_mb": round(ProcessStats.rss_mb(), 1)}  # warm-up, not measured

        def run(label: str) -> None:
            nonlocal seq
            w0, c0 = agent.health.tasks["noise"].windows, time.process_time()
            seq += feed(agent, seconds, seq)
            windows = agent.health.tasks["noise"].windows - w0
            cpu_ms = (time.process_time() - c0) * 1000
            out[label] = {"windows": windows, "cpu_ms_per_window": round(cpu_ms / windows, 2),
                          "rss_mb": round(ProcessStats.rss_mb(), 1)}

        run("without")
        good = signed_copy(noise_model.parent, tmp_path / "good", agent.test_key, edit=resaved(2))
        ack = agent.commands.handle("shadow", shadow_command("m1", good, windows=1_000_000))
        assert ack["status"] == "shadowing", ack
        cand = agent.shadows.get("noise")
        run("with")
        out["candidate"] = {**agent.shadows.health()["noise"],
                            "cpu_ms_per_window": round(cand.stats.cpu_ms / max(1, cand.stats.n), 2)}
        sha = cand.staged.sha
        agent.commands.handle("abort", decision("m2", "abort", sha, agent.test_key))
        run("without_again")
        return out
    finally:
        agent.outbox.close()


def test_shadow_mode_costs_about_one_more_inference_per_window(tmp_path, noise_model):
    m = measure_overhead(tmp_path, noise_model, seconds=20.0)
    base = (m["without"]["cpu_ms_per_window"] + m["without_again"]["cpu_ms_per_window"]) / 2
    assert m["candidate"]["n"] == m["with"]["windows"] and m["candidate"]["sk"] == 0, m
    # the candidate's own CPU is most of the difference, and it is less than a whole window's work
    assert m["candidate"]["cpu_ms_per_window"] < base, m
    assert m["with"]["cpu_ms_per_window"] > base, m


if __name__ == "__main__":  # PYTHONPATH=. .venv/bin/python tests/test_agent_shadow.py [seconds]
    import sys
    import tempfile

    from agent_fixtures import SHIPPED_NOISE

    print(json.dumps(measure_overhead(Path(tempfile.mkdtemp()), SHIPPED_NOISE,
                                      float(sys.argv[1]) if len(sys.argv) > 1 else 60.0), indent=1))
