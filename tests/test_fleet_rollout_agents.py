"""Rollouts to real agents: ``roadside agent`` processes on the city stack, driven by the controller.

Two agents (their own MQTT users on the NATS listener, a mosquitto for their microphones fed a
test tone) run the shipped noise model, signed as the baseline bundle (release 1). The
controller serves the bundles over HTTP (``updates.url_hosts: [127.0.0.1]``) and everything it
knows comes from PostgreSQL: the agents' acks, shadow reports and states, stored by ingest.

- a good candidate (the same weights re-saved: another sha256, release 2) shadows with full
  agreement on the canary, is promoted, then reaches the second agent;
- a bad one (the final layer negated: the active model's least likely class wins) is stopped on
  the canary by the agreement gate and aborted there; no agent ever runs it;
- a promoted candidate is rolled back on an operator's abort with the baseline bundle and a
  ``rollback`` signature, which the agent checks against its highest release;
- a replayed old update (the baseline, release 1, without that signature) is refused.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest

from agent_fixtures import AgentProcess, Broker, write_agent_config
from fleet_fixtures import _finish, _start, device_creds, sql, wait_for
from ops_fixtures import rehash, send_audio, signed_copy, tone

AGENTS = ["agt-0001", "agt-0002"]
FAST = dict(windows=6, report_every=3, stage_timeout_s=90.0, soak_s=1.0, resend_s=10.0, catchup_s=30.0, tick_s=0.3)


def _edit(release: int, version: str, negate: bool = False):
    def edit(folder: Path) -> None:
        import onnx
        from onnx import numpy_helper

        if version != "baseline":
            model = onnx.load(str(folder / "model.onnx"))
            model.doc_string = f"rollout {version}"
            if negate:  # logits negated: the least likely class becomes the top one
                last = model.graph.node[-1]
                for init in model.graph.initializer:
                    if init.name in last.input[1:]:
                        init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), init.name))
            onnx.save(model, str(folder / "model.onnx"))
        rehash(folder, release, version)
    return edit


def _bundle(noise_model: Path, out: Path, key: Path, release: int, version: str, negate: bool = False) -> Path:
    from agent.control.bundle_io import make_bundle
    folder = signed_copy(noise_model.parent, out / version, key, edit=_edit(release, version, negate))
    make_bundle(folder, out / f"{version}.tar")
    return out / f"{version}.tar"


@pytest.fixture(scope="module")
def city(noise_model, tmp_path_factory):
    from agent.control.signing import generate_keypair

    stack = _start(nodes=1, workers=1)
    tmp = tmp_path_factory.mktemp("agents")
    priv, pub = generate_keypair(tmp / "keys" / "ops.key")
    sensors = Broker(tmp / "sensors")
    agents, stop = [], threading.Event()
    try:
        for dev in AGENTS:
            user, pwfile = device_creds(stack, dev, "lab")
            cfg = write_agent_config(tmp / dev, noise_model, sensors.port, stack.mqtt_ports[0], **{
                "device.id": dev, "uplink.broker.username": user, "uplink.broker.password_file": str(pwfile),
                "updates": {"trusted_keys": [str(pub)], "url_hosts": ["127.0.0.1"],
                            "shadow": {"min_report_every": 1, "cpu_share": 10.0}}})
            agents.append(AgentProcess(cfg, tmp / f"{dev}.log"))
        wait_for(lambda: len(sql(stack, "SELECT 1 FROM devices WHERE online AND device = ANY($1::text[])",
                                 AGENTS)) == 2, 90, "both agents online")

        def microphones():  # a tone for both poles, continuously: windows for the shadows to compare
            seq = 0
            while not stop.is_set():
                for dev in AGENTS:
                    send_audio(sensors.port, tone(4.0), device=dev, seq0=seq)
                seq += 40
                time.sleep(2.0)
        feeder = threading.Thread(target=microphones, daemon=True)
        feeder.start()
        out = tmp / "bundles-src"
        b = {"base": _bundle(noise_model, out, priv, 1, "baseline"), "good": _bundle(noise_model, out, priv, 2, "v2"),
             "bad": _bundle(noise_model, out, priv, 3, "v3-negated", negate=True),
             "v4": _bundle(noise_model, out, priv, 4, "v4")}
        yield {"stack": stack, "priv": priv, "bundles": b, "folder": tmp, "agents": agents}
    finally:
        stop.set()
        codes = [a.stop() for a in agents]
        sensors.stop()
        _finish(stack)
    assert codes == [0] * len(agents), [a.tail() for a in agents]


def _rollout(city, cand: str, base: str, stages=(0.5, 1.0), abort_after_promote: bool = False, **settings) -> dict:
    import asyncpg

    from fleet.rollout import service, store
    stack = city["stack"]

    async def go():
        conn = await asyncpg.connect(stack.db_url)
        try:
            rid = await service.start(conn, city["bundles"][cand], city["bundles"][base], list(stages), "alice",
                                      city["folder"] / "bundles", service.Settings(**{**FAST, **settings}),
                                      # six windows' p95 on a shared CI box is noise: the latency gate is
                                      # tested on simulated poles (test_fleet_rollout_sim.py), not here
                                      {"min_windows": FAST["windows"], "max_latency_ratio": 20.0}, "agt-%")
            mq = service.MqttOps.from_stack_info(json.loads((stack.folder / "stack.json").read_text()))
            task = asyncio.ensure_future(service.run(stack.db_url, rid, city["priv"], mq, city["folder"] / "bundles",
                                                     max_s=240))
            while abort_after_promote and not task.done():
                if await conn.fetchval("SELECT count(*) FROM rollout_targets WHERE rollout_id=$1 AND ever_ran", rid):
                    await store.request_abort(conn, rid, "bob")
                    break
                await asyncio.sleep(0.3)
            return await task
        finally:
            await conn.close()
    return asyncio.run(go())


def _models(city) -> dict[str, str]:
    rows = sql(city["stack"], "SELECT device, models FROM devices WHERE device = ANY($1::text[])", AGENTS)
    return {r["device"]: json.loads(r["models"])["noise"]["sha256"] for r in rows}


def _sha(city, name: str) -> str:
    from fleet.rollout.bundles import read_bundle
    return read_bundle(city["bundles"][name]).model_sha256


def test_a_good_candidate_reaches_both_agents_after_shadowing_on_the_canary(city):
    ro = _rollout(city, "good", "base")
    assert ro["state"] == "completed", ro
    want = _sha(city, "good")
    wait_for(lambda: set(_models(city).values()) == {want}, 30, "both agents' state naming the candidate")
    reps = sql(city["stack"], "SELECT device, n, agr, final FROM shadow_reports WHERE cand16=$1 ORDER BY n", want[:16])
    assert reps and reps[-1]["agr"] == 1.0 and reps[-1]["n"] >= FAST["windows"], reps
    acks = {(a["device"], a["cmd"], a["status"]) for a in
            sql(city["stack"], "SELECT * FROM command_acks WHERE cmd_id LIKE $1", f"ro{ro['id']}-%")}
    assert {(d, "promote", "applied") for d in AGENTS} <= acks


def test_a_bad_candidate_is_stopped_on_the_canary_and_never_runs(city):
    before = _models(city)
    ro = _rollout(city, "bad", "good")
    assert ro["state"] == "halted" and ro["gate"]["gate"] == "agreement", ro
    targets = sql(city["stack"], "SELECT * FROM rollout_targets WHERE rollout_id=$1", ro["id"])
    assert [t["status"] for t in targets if t["stage"] == 0] == ["aborted"]
    assert [t["sends"] for t in targets if t["stage"] == 1] == [0]
    assert not any(t["ever_ran"] for t in targets)
    assert _models(city) == before


def test_an_operator_abort_rolls_a_promoted_agent_back_with_a_signed_rollback(city):
    ro = _rollout(city, "v4", "good", abort_after_promote=True, soak_s=60.0)
    assert ro["state"] == "aborted", ro
    targets = sql(city["stack"], "SELECT * FROM rollout_targets WHERE rollout_id=$1", ro["id"])
    switched = [t for t in targets if t["ever_ran"]]
    assert len(switched) == 1 and switched[0]["status"] == "rolled_back", targets
    want = _sha(city, "good")
    wait_for(lambda: set(_models(city).values()) == {want}, 30, "both agents back on v2")


def test_a_replayed_old_update_is_refused_by_the_agent(city):
    from fleet.rollout import service
    from fleet.rollout.bundles import BundleStore, read_bundle
    from fleet.rollout.sender import Sender
    stack = city["stack"]
    base = read_bundle(city["bundles"]["base"])
    bs = BundleStore(city["folder"] / "replay")
    bs.add(base)
    url = bs.serve()
    mq = service.MqttOps.from_stack_info(json.loads((stack.folder / "stack.json").read_text()))
    cmd = json.dumps({"id": "replay-1", "task": "noise", "url": f"{url}/bundles/{base.sha256}",
                      "sha256": base.sha256}).encode()

    async def send():
        s = Sender(mq.ports, mq.user, mq.password)
        try:
            return await s.send([(f"roadside/v1/lab/{AGENTS[0]}/cmd/model", cmd)])
        finally:
            await s.close()
    try:
        assert asyncio.run(send()) == 1
        ack = wait_for(lambda: sql(stack, "SELECT * FROM command_acks WHERE device=$1 AND cmd_id='replay-1'",
                                   AGENTS[0]), 30, "the agent's answer in command_acks")[0]
    finally:
        bs.close()
    assert ack["status"] == "refused" and ack["stage"] == "verify" and "rollback" in ack["reason"], ack
    assert _models(city)[AGENTS[0]] == _sha(city, "good")
