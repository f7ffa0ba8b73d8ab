"""Rollouts end to end on the real city stack (NATS, PostgreSQL, ingest) with simulated poles.

The poles (``fleet.simulator`` with ``commands``) answer the rollout protocol over MQTT: they fetch
the bundles the controller serves, verify signatures and releases, send acks and shadow reports
through their outbox at QoS 1; ingest stores those; the controller reads them from PostgreSQL.
Each test uses its own poles (``devices_like``) on one stack shared by the module.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleet_fixtures import _finish, _start, sql

REPO = Path(__file__).resolve().parents[1]
FAST = dict(windows=200, report_every=100, stage_timeout_s=20.0, soak_s=1.0, resend_s=4.0, catchup_s=20.0, tick_s=0.3)


@pytest.fixture(scope="module")
def rig():
    from agent.control.signing import generate_keypair

    stack = _start(nodes=1, workers=1)
    stack.priv, stack.pub = generate_keypair(stack.folder / "keys" / "ops.key")
    yield stack
    _finish(stack)


def _names(prefix: str, n: int, sites: int = 4) -> dict[str, str]:
    return {f"{prefix}-{i:03d}": f"site-{i % sites}" for i in range(n)}


class Run:
    """One test's bundles, poles and rollout on the shared stack."""

    def __init__(self, stack, prefix: str):
        from fleet.rollout import kit
        self.stack, self.prefix = stack, prefix
        self.folder = stack.folder / prefix
        self.base = kit.toy_bundle(self.folder, stack.priv, 1, "1.0")
        self.cand = kit.toy_bundle(self.folder, stack.priv, 2, "2.0")

    async def poles(self, n: int, behaviour=None):
        from fleet.rollout import kit
        from fleet.rollout.bundles import read_bundle
        from fleet.simulator import Simulator
        names = _names(self.prefix, n)
        beh = {read_bundle(self.cand).sha256: behaviour} if behaviour else {}
        self.sim = Simulator(kit.sim_config(self.stack, names, self.stack.pub, beh, self.base))
        await asyncio.sleep(0.6)  # users reloaded
        await self.sim.start()
        await kit.wait_known(self.stack.db_url, list(names))
        return self.sim

    async def start(self, stages=(0.1, 0.5, 1.0), **bounds) -> int:
        import asyncpg

        from fleet.rollout import service
        conn = await asyncpg.connect(self.stack.db_url)
        try:
            return await service.start(conn, self.cand, self.base, list(stages), "alice", self.folder / "bundles",
                                       service.Settings(**FAST), {"min_windows": 200, **bounds}, f"{self.prefix}-%")
        finally:
            await conn.close()

    async def run(self, rid: int, max_s: float = 90) -> dict:
        from fleet.rollout import service
        mq = service.MqttOps.from_stack_info(json.loads((self.stack.folder / "stack.json").read_text()))
        return await service.run(self.stack.db_url, rid, self.stack.priv, mq, self.folder / "bundles", max_s=max_s)

    def versions(self) -> dict[str, str]:
        return {p.device: p.models["noise"]["version"] for p in self.sim.poles}


def _targets(stack, rid: int) -> dict[str, dict]:
    return {r["device"]: r for r in sql(stack, "SELECT * FROM rollout_targets WHERE rollout_id=$1", rid)}


def _events(stack, rid: int, kind: str) -> list[dict]:
    return sql(stack, "SELECT * FROM rollout_events WHERE rollout_id=$1 AND kind=$2 ORDER BY id", rid, kind)


async def off_loop(fn, *args):
    """A blocking helper (``sql`` runs its own event loop) from inside a test's event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def test_a_good_candidate_reaches_every_pole_stage_by_stage(rig):
    r = Run(rig, "rgood")

    async def go():
        await r.poles(20)
        rid = await r.start()
        t0 = time.monotonic()
        ro = await r.run(rid)
        await r.sim.stop()
        return rid, ro, time.monotonic() - t0
    rid, ro, took = asyncio.run(go())
    assert ro["state"] == "completed", ro
    assert set(r.versions().values()) == {"2.0"}
    targets = _targets(rig, rid)
    assert {t["status"] for t in targets.values()} == {"promoted"} and all(t["ever_ran"] for t in targets.values())
    assert [sum(t["stage"] <= k for t in targets.values()) for k in range(3)] == [2, 10, 20]
    gates = _events(rig, rid, "gate")
    assert [g["detail"]["stage"] for g in [{"detail": json.loads(x["detail"])} for x in gates]] == [0, 1, 2]
    started = _events(rig, rid, "started")[0]
    assert started["actor"] == "alice"
    promoted = _events(rig, rid, "promoted")
    assert sorted(e["device"] for e in promoted) == sorted(targets)  # when each pole switched, once each
    # what the poles said is in the database, through ingest: acks and shadow reports
    acks = sql(rig, "SELECT cmd, status, count(*) AS n FROM command_acks WHERE device LIKE 'rgood-%' GROUP BY 1, 2")
    assert {(a["cmd"], a["status"]): a["n"] for a in acks} == {("shadow", "shadowing"): 20, ("promote", "applied"): 20}
    reps = sql(rig, "SELECT count(DISTINCT device) AS d, bool_or(final) AS f FROM shadow_reports "
                    "WHERE device LIKE 'rgood-%'")
    assert reps[0]["d"] == 20 and reps[0]["f"]
    assert took < 60


@pytest.mark.parametrize("case", ["agreement", "latency", "install"])
def test_a_bad_candidate_is_stopped_at_the_canaries_and_they_end_on_the_old_model(rig, case):
    from fleet.rollout.simpole import BAD_AGREEMENT, BROKEN, SLOW
    behaviour = {"agreement": BAD_AGREEMENT, "latency": SLOW, "install": BROKEN}[case]
    r = Run(rig, f"rbad{case[:3]}")

    async def go():
        sim = await r.poles(20, behaviour)
        away = sim.poles[-1]  # a pole away during the rollout: must be left alone when it returns
        away.drop(away_s=8.0)
        await asyncio.sleep(1.0)
        rid = await r.start()
        ro = await r.run(rid)
        await asyncio.sleep(8.0)  # the away pole is back by now
        await sim.stop()
        return rid, ro, away.device
    rid, ro, away = asyncio.run(go())
    assert ro["state"] == "halted", ro
    assert ro["gate"]["gate"] == case and ro["gate"]["stage"] == 0, ro["gate"]
    assert ro["gate"]["value"] > ro["gate"]["bound"]
    targets = _targets(rig, rid)
    canaries = {d for d, t in targets.items() if t["stage"] == 0}
    assert len(canaries) == 2
    assert all(t["sends"] == 0 and t["status"] == "skipped" for d, t in targets.items() if d not in canaries)
    assert not any(t["ever_ran"] for t in targets.values())
    assert set(r.versions().values()) == {"1.0"}  # every pole, canaries included, runs the old model
    assert targets[away]["status"] == "skipped"
    halted = _events(rig, rid, "halted")
    assert json.loads(halted[0]["detail"])["gate"]["gate"] == case


def test_a_candidate_that_takes_poles_offline_after_promotion_is_rolled_back_on_them(rig):
    from fleet.rollout.simpole import Behaviour
    r = Run(rig, "rofl")

    async def go():
        await r.poles(20, Behaviour(offline_after_promote_s=4.0))
        rid = await r.start()
        ro = await r.run(rid)
        await r.sim.stop()
        return rid, ro
    rid, ro = asyncio.run(go())
    assert ro["state"] == "halted" and ro["gate"]["gate"] == "offline", ro
    targets = _targets(rig, rid)
    switched = {d for d, t in targets.items() if t["ever_ran"]}
    assert len(switched) == 2  # the two canaries ran it ...
    assert all(targets[d]["status"] == "rolled_back" for d in switched)  # ... and were put back when they returned
    assert set(r.versions().values()) == {"1.0"}
    assert all(t["sends"] == 0 for t in targets.values() if t["stage"] > 0)


def test_an_operator_abort_rolls_back_what_switched(rig):
    import asyncpg

    from fleet.rollout import store
    r = Run(rig, "rabort")

    async def go():
        await r.poles(10)
        rid = await r.start(stages=(0.2, 1.0))
        task = asyncio.ensure_future(r.run(rid))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not await off_loop(_events, rig, rid, "promoted"):
            await asyncio.sleep(0.3)
        conn = await asyncpg.connect(rig.db_url)
        assert await store.request_abort(conn, rid, "bob") == "running"
        await conn.close()
        ro = await task
        await r.sim.stop()
        return rid, ro
    rid, ro = asyncio.run(go())
    assert ro["state"] == "aborted" and ro["reason"] == "aborted by bob"
    assert set(r.versions().values()) == {"1.0"}
    assert _events(rig, rid, "abort_requested")[0]["actor"] == "bob"


def test_the_controller_killed_mid_stage_resumes_from_the_database(rig):
    r = Run(rig, "rkill")

    def controller(rid: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "agent.cli", "fleet", "rollout", "run", "--id", str(rid),
                                 "--key", str(rig.priv), "--dir", str(rig.folder), "--bundles",
                                 str(r.folder / "bundles"), "--quiet"], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)

    async def go():
        await r.poles(20)
        rid = await r.start()
        first = controller(rid)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # mid stage 2: its poles asked to shadow, not all promoted
            st = (await off_loop(sql, rig, "SELECT stage, phase FROM rollouts WHERE id=$1", rid))[0]
            if st["stage"] == 1 and st["phase"] == "shadow" and (await off_loop(_events, rig, rid, "shadow_sent"))[2:]:
                break
            await asyncio.sleep(0.1)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
        killed_at = (await off_loop(sql, rig, "SELECT stage, phase FROM rollouts WHERE id=$1", rid))[0]
        second = controller(rid)
        out = await asyncio.get_running_loop().run_in_executor(None, lambda: second.communicate(timeout=120)[0])
        await r.sim.stop()
        return rid, killed_at, second.returncode, out
    rid, killed_at, rc, out = asyncio.run(go())
    assert killed_at["stage"] == 1, killed_at
    assert rc == 0, out
    assert json.loads(out.strip().splitlines()[-1])["state"] == "completed"
    assert set(r.versions().values()) == {"2.0"}
    promoted = [e["device"] for e in _events(rig, rid, "promoted")]
    assert sorted(promoted) == sorted(set(promoted)) and len(promoted) == 20  # each pole switched once


def test_a_pole_away_during_its_stage_gets_the_candidate_when_it_returns(rig):
    r = Run(rig, "raway")

    async def go():
        sim = await r.poles(10)
        rid = await r.start(stages=(0.5, 1.0))
        canaries = {d for d, t in (await off_loop(_targets, rig, rid)).items() if t["stage"] == 0}
        away = next(p for p in sim.poles if p.device in canaries)
        away.drop(away_s=6.0)
        await asyncio.sleep(0.5)
        ro = await r.run(rid)
        await sim.stop()
        return rid, ro, away.device
    rid, ro, away = asyncio.run(go())
    assert ro["state"] == "completed", ro
    assert set(r.versions().values()) == {"2.0"}
    t = _targets(rig, rid)[away]
    assert t["cmd"] == "model" and t["status"] == "promoted"  # the plain update, after its stage was decided


def test_a_replayed_old_update_is_refused_by_the_pole(rig):
    from agent.control.signing import load_private_key, rollback_message
    from fleet.rollout.messages import _sign
    r = Run(rig, "rreplay")

    async def go():
        sim = await r.poles(2)
        rid = await r.start(stages=(1.0,))
        ro = await r.run(rid)
        assert ro["state"] == "completed"
        pole = sim.poles[0]
        base_sha = ro["base_bundle_sha256"]
        url = f"http://127.0.0.1:{ro['settings']['bundle_port']}/bundles/{base_sha}"
        from fleet.rollout.bundles import BundleStore
        bs = BundleStore(r.folder / "bundles")
        bs.serve("127.0.0.1", ro["settings"]["bundle_port"])
        try:
            replay = await pole.rollout.handle("model", json.dumps({"id": "old-1", "task": "noise", "url": url,
                                                                   "sha256": base_sha}).encode())
            model_sha = ro["base_model_sha256"]
            wrong = _sign(load_private_key(rig.priv), rollback_message("noise", 1, model_sha))  # not from release 2
            forged = await pole.rollout.handle("model", json.dumps({"id": "old-2", "task": "noise", "url": url,
                                                                   "sha256": base_sha, "rollback": wrong}).encode())
        finally:
            bs.close()
        await sim.stop()
        return replay, forged, pole.models["noise"]["version"]
    replay, forged, version = asyncio.run(go())
    assert replay["status"] == "refused" and replay["stage"] == "verify" and "not newer" in replay["reason"]
    assert forged["status"] == "refused" and "signature" in forged["reason"]
    assert version == "2.0"


def test_the_cli_starts_shows_and_aborts_a_rollout(rig):
    r = Run(rig, "rcli")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "agent.cli", "fleet", "rollout", *args, "--dir", str(rig.folder)],
                              cwd=REPO, capture_output=True, text=True, timeout=120)

    async def go():
        sim = await r.poles(4)
        started = await off_loop(lambda: cli("start", "--bundle", str(r.cand), "--baseline", str(r.base), "--key",
                                             str(rig.priv), "--stages", "50%,100%", "--devices-like", "rcli-%",
                                             "--by", "dana", "--detach", "--bundles", str(r.folder / "bundles")))
        assert started.returncode == 0, started.stderr
        rid = json.loads(started.stdout)["id"]
        again = await off_loop(lambda: cli("start", "--bundle", str(r.cand), "--baseline", str(r.base), "--key",
                                           str(rig.priv), "--devices-like", "rcli-%", "--detach"))
        assert again.returncode != 0 and "already in progress" in again.stderr  # one rollout per task at a time
        status = await off_loop(lambda: cli("status", "--id", str(rid), "--json"))
        doc = json.loads(status.stdout)
        assert doc["rollout"]["started_by"] == "dana" and [s["poles"] for s in doc["stages"]] == [2, 2]
        assert (await off_loop(lambda: cli("abort", "--id", str(rid), "--by", "erin"))).returncode == 0
        ran = await off_loop(lambda: cli("run", "--id", str(rid), "--key", str(rig.priv), "--quiet",
                                         "--bundles", str(r.folder / "bundles")))
        listing = await off_loop(lambda: cli("status"))
        await sim.stop()
        return rid, ran, listing
    rid, ran, listing = asyncio.run(go())
    assert ran.returncode == 1 and json.loads(ran.stdout)["state"] == "aborted", ran.stdout + ran.stderr
    assert str(rid) in listing.stdout and "aborted" in listing.stdout
    bad = subprocess.run([sys.executable, "-m", "agent.cli", "fleet", "rollout", "start", "--bundle", str(r.cand),
                          "--baseline", str(r.base), "--key", str(rig.priv), "--stages", "50%,10%", "--dir",
                          str(rig.folder)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "--stages" in bad.stderr
