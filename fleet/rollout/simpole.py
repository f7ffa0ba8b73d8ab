"""A simulated pole's rollout side (``fleet.simulator`` with ``SimConfig.commands``): the protocol of
docs/rollouts.md answered the way the agent answers it, with a behaviour per candidate the test
or bench chooses (``Behaviour``: agreement, confidence, latency, errors, install failure, going
offline after promotion).

What is real: bundles are fetched (``url``, once per bundle for the whole simulator) or decoded
(inline), their manifest signature verified against the trusted keys, the release rule applied
(newer than every release applied, or a valid ``rollback`` signature), promote/abort signatures
verified; answers go through the pole's outbox at QoS 1 (a repeated id and bytes is answered from
memory); shadow reports are the wire format, cumulative, every ``report_every`` windows and at the
end. What is simulated: the comparison figures (from ``Behaviour``, with a little per-pole noise)
and time (``windows_per_s`` windows a second).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import tarfile
import time
import urllib.request
from dataclasses import dataclass

from agent.control.signing import SignatureError, rollback_message, shadow_message, verify_bytes, verify_manifest_bytes


@dataclass(frozen=True)
class Behaviour:
    agr: float = 0.96               # agreement with the active model
    cf: float = 0.85                # candidate's mean top-1 probability
    acf: float = 0.86               # active model's
    p95_active: float = 3.0         # ms
    latency_ratio: float = 1.0      # candidate p95 / active p95
    err_rate: float = 0.0           # failed candidate inferences per window
    install_fail: bool = False      # the candidate fails its smoke test (ack rolled_back)
    offline_after_promote_s: float = 0.0  # > 0: the pole's network drops for this long once it runs it
    windows_per_s: float = 200.0    # simulated time: windows compared per second


GOOD = Behaviour()
BAD_AGREEMENT = Behaviour(agr=0.55, cf=0.6)
SLOW = Behaviour(latency_ratio=4.0)
BROKEN = Behaviour(install_fail=True)


class BundleCache:
    """One fetch and one signature check per bundle for the whole simulator."""

    def __init__(self, keys: list):
        self.keys, self._got, self._lock = keys, {}, asyncio.Lock()

    async def get(self, url: str | None, sha256: str | None, inline: str | None) -> dict:
        key = sha256 or hashlib.sha256((inline or "").encode()).hexdigest()
        async with self._lock:
            if key not in self._got:
                self._got[key] = await asyncio.get_running_loop().run_in_executor(None, self._load, url, sha256, inline)
        if isinstance(self._got[key], Exception):
            raise self._got[key]
        return self._got[key]

    def _load(self, url, sha256, inline) -> dict | Exception:
        from agent.control.store import model_file
        try:
            data = base64.b64decode(inline) if inline else urllib.request.urlopen(url, timeout=10).read()
            if sha256 and hashlib.sha256(data).hexdigest() != sha256:
                return ValueError("fetch: sha256 of the bundle does not match")
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                manifest, _ = verify_manifest_bytes(tar.extractfile("manifest.json").read(),
                                                    tar.extractfile("manifest.sig").read(), self.keys)
        except (OSError, tarfile.TarError, KeyError, AttributeError, SignatureError, ValueError) as e:
            return ValueError(f"verify: {type(e).__name__}: {e}")
        return {"bundle": hashlib.sha256(data).hexdigest(), "task": manifest.get("task"),
                "release": manifest.get("release"), "version": manifest.get("version"),
                "sha256": manifest["files"][model_file(manifest)]["sha256"]}


class Refused(Exception):
    def __init__(self, reason: str, stage: str, status: str = "refused"):
        self.reason, self.stage, self.status = reason, stage, status
        super().__init__(reason)


class PoleRollout:
    """One simulated pole's models: active per task, the highest release applied, a candidate."""

    def __init__(self, pole, sim):
        self.pole, self.sim = pole, sim
        self.highest: dict[str, int] = {"noise": sim.cfg.release}
        self.candidate: dict[str, dict] = {}
        self._answers: dict[tuple, dict] = {}
        self._lock = asyncio.Lock()

    def on_message(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        if len(parts) == 6 and parts[4] == "cmd":
            asyncio.ensure_future(self.handle(parts[5], payload))

    async def handle(self, name: str, payload: bytes) -> dict:
        async with self._lock:  # one command at a time, as the agent's command thread
            try:
                cmd = json.loads(payload)
                key = (name, cmd.get("id"), hashlib.sha256(payload).hexdigest())
            except (ValueError, AttributeError):
                return {}
            if key in self._answers:
                return self._answer(name, cmd["id"], self._answers[key])
            run = getattr(self, f"_cmd_{name}", None)
            try:
                if run is None:
                    raise Refused(f"unknown command {name!r}", "parse")
                outcome = {"ok": True, **await run(cmd)}
            except Refused as e:
                outcome = {"ok": False, "status": e.status, "stage": e.stage, "reason": e.reason[:400]}
            self._answers[key] = outcome
            return self._answer(name, cmd.get("id"), outcome)

    def _answer(self, name: str, cmd_id, outcome: dict) -> dict:
        ack = {"v": 1, "id": cmd_id, "cmd": name, "ts": int(time.time() * 1000), "ch": "sim", **outcome}
        self.pole.seq += 1
        self.pole.store(f"{self.pole.base}/cmd/{name}/ack", json.dumps(ack, separators=(",", ":")).encode(), False)
        return ack

    def behaviour(self, info: dict) -> Behaviour:
        return self.sim.cfg.behaviours.get(info["bundle"], self.sim.cfg.behaviours.get(info["sha256"], GOOD))

    async def _bundle(self, cmd: dict) -> dict:
        try:
            info = await self.sim.bundles.get(cmd.get("url"), cmd.get("sha256"), cmd.get("bundle"))
        except ValueError as e:
            raise Refused(str(e), "verify") from None
        if info["task"] != cmd.get("task"):
            raise Refused(f"the bundle is for task {info['task']!r}, not {cmd.get('task')!r}", "verify")
        return info

    def _check_sig(self, action: str, cmd: dict) -> dict:
        task, cand = cmd.get("task"), self.candidate.get(cmd.get("task"))
        try:
            verify_bytes(shadow_message(action, task, str(cmd.get("sha256"))), cmd.get("sig"),
                         self.sim.cfg.trusted_keys, action)
        except SignatureError as e:
            raise Refused(str(e), "verify") from None
        if cand is None or cand["sha256"] != cmd.get("sha256"):
            raise Refused(f"no candidate {str(cmd.get('sha256'))[:12]} installed for {task}", "shadow")
        return cand

    async def _cmd_shadow(self, cmd: dict) -> dict:
        info = await self._bundle(cmd)
        task, b = cmd["task"], self.behaviour(info)
        if info["sha256"] == self.pole.models[task]["sha256"]:
            return {"status": "unchanged", "model": {"task": task, "sha256": info["sha256"]}}
        if not isinstance(info["release"], int) or info["release"] <= self.highest.get(task, 0):
            raise Refused(f"release {info['release']} is not newer than release {self.highest.get(task)}", "verify")
        if b.install_fail:
            raise Refused("smoke: the candidate's smoke inference failed; the running model is unchanged", "smoke",
                          "rolled_back")
        old = self.candidate.pop(task, None)
        if old and old.get("reporter"):
            old["reporter"].cancel()
        cand = {**info, "n": 0}
        cand["reporter"] = asyncio.ensure_future(self._report(task, cand, b, cmd))
        self.candidate[task] = cand
        return {"status": "shadowing", "model": {"task": task, "sha256": info["sha256"], "release": info["release"],
                                                 "version": info["version"]}}

    async def _report(self, task: str, cand: dict, b: Behaviour, cmd: dict) -> None:
        total = int(cmd.get("windows", 300))
        every = max(1, int(cmd.get("report_every", 100)))
        rng = self.pole.rng
        while cand["n"] < total:
            step = min(every, total - cand["n"])
            await asyncio.sleep(step / b.windows_per_s)
            cand["n"] += step
            n = cand["n"]
            self.pole.seq += 1
            p95a = round(b.p95_active * rng.uniform(0.9, 1.1), 2)
            rep = {"v": 1, "id": f"{self.pole.device}:{self.pole.origin.boot}:{self.pole.seq}",
                   "ts": int(time.time() * 1000), "k": task, "cs": cand["sha256"][:16],
                   "as": self.pole.models[task]["sha256"][:16], "n": n, "sk": 0,
                   "agr": round(min(1.0, max(0.0, b.agr + rng.uniform(-0.01, 0.01))), 3),
                   "cf": round(b.cf, 3), "acf": round(b.acf, 3), "div": round((1 - b.agr) / 3, 3),
                   "p95": [p95a, round(p95a * b.latency_ratio, 2)], "err": round(b.err_rate * n),
                   **({"end": 1} if n >= total else {})}
            self.pole.store(f"{self.pole.base}/shadow", json.dumps(rep, separators=(",", ":")).encode(), False)

    def _activate(self, task: str, info: dict) -> dict:
        self.pole.models[task] = {**self.pole.models[task], "sha256": info["sha256"], "version": info["version"],
                                  "release": info["release"]}
        self.highest[task] = max(self.highest.get(task, 0), info["release"])
        self.pole.seq += 1
        self.pole.store(f"{self.pole.base}/state", self.pole.birth(), False)  # as the agent republishes its state
        return {"status": "applied", "model": {"task": task, "sha256": info["sha256"], "version": info["version"],
                                               "release": info["release"]}}

    async def _cmd_promote(self, cmd: dict) -> dict:
        cand = self._check_sig("promote", cmd)
        task = cmd["task"]
        self.candidate.pop(task, None)
        if cand.get("reporter"):
            cand["reporter"].cancel()
        out = self._activate(task, cand)
        b = self.behaviour(cand)
        if b.offline_after_promote_s > 0:
            asyncio.get_running_loop().call_later(0.5, self.pole.drop, b.offline_after_promote_s)
        return out

    async def _cmd_abort(self, cmd: dict) -> dict:
        cand = self._check_sig("abort", cmd)
        self.candidate.pop(cmd["task"], None)
        if cand.get("reporter"):
            cand["reporter"].cancel()
        return {"status": "aborted", "model": {"task": cmd["task"], "sha256": cand["sha256"]}}

    async def _cmd_model(self, cmd: dict) -> dict:
        info = await self._bundle(cmd)
        task = cmd["task"]
        if info["sha256"] == self.pole.models[task]["sha256"]:
            return {"status": "unchanged", "model": {"task": task, "sha256": info["sha256"]}}
        highest = self.highest.get(task, 0)
        if not isinstance(info["release"], int) or info["release"] <= highest:
            if cmd.get("rollback") is None:
                raise Refused(f"release {info['release']} is not newer than release {highest} already applied: an "
                              f"older model needs a signed rollback permission (rollback)", "verify")
            try:
                verify_bytes(rollback_message(task, highest, info["sha256"]), cmd["rollback"],
                             self.sim.cfg.trusted_keys, "rollback")
            except SignatureError as e:
                raise Refused(f"{e} (it must sign the task, release {highest} and this model's sha256)",
                              "verify") from None
        if self.behaviour(info).install_fail:
            raise Refused("smoke: the model's smoke inference failed", "smoke", "rolled_back")
        return self._activate(task, info)
