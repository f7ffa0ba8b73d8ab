"""Starting a rollout and running its controller: what the CLI, the tests and the bench share.

``start`` checks the two bundles (same task, candidate's release newer), copies them into the
bundle folder, chooses the poles per stage (``plan``), works out the bounds (``gates``) and
writes the rollout, its targets and a ``started`` event. ``run`` serves the bundle folder over
HTTP, connects to MQTT as operations and runs the ``Controller`` until the rollout ends.
The operator's private key is a path given to ``run`` each time; it is never stored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

from ..servers.procs import free_port
from . import gates, plan, store
from .bundles import BundleError, BundleStore, read_bundle


@dataclass
class Settings:
    windows: int = 300            # windows each canary compares (cmd/shadow "windows")
    minutes: int = 30             # and at most this long ("minutes")
    report_every: int = 100       # a shadow report every this many windows
    stage_timeout_s: float = 2400.0  # shadow phase: decide with what is there after this long
    soak_s: float = 600.0         # after a stage's promotion: wait, checking install/offline gates
    resend_s: float = 30.0        # an unanswered command goes again (same id and bytes) after this
    catchup_s: float = 86400.0    # after the last stage: how long poles that were away are waited for
    tick_s: float = 1.0
    bundle_url: str = ""          # where poles fetch bundles (http://host:port); empty: served by `run`
    bundle_host: str = "127.0.0.1"
    bundle_port: int = 0


@dataclass(frozen=True)
class MqttOps:
    ports: list[int]
    user: str
    password: str
    host: str = "127.0.0.1"

    @classmethod
    def from_stack_info(cls, info: dict) -> "MqttOps":
        u = urlparse(info["nats_urls"][0])
        return cls(list(info["mqtt_ports"]), u.username, u.password, "127.0.0.1")


async def start(conn, candidate: Path, baseline: Path, stages: list[float], actor: str, bundle_dir: Path,
                settings: Settings, overrides: dict, devices_like: str | None = None) -> int:
    """A new rollout (its id); ``BundleError``/``PlanError`` naming what is wrong otherwise."""
    cand, base = read_bundle(candidate), read_bundle(baseline)
    if cand.task != base.task:
        raise BundleError(f"{candidate}: task {cand.task}, but the baseline {baseline} is {base.task}")
    if cand.release <= base.release:
        raise BundleError(f"{candidate}: release {cand.release} is not newer than the baseline's {base.release}")
    bs = BundleStore(bundle_dir)
    bs.add(cand)
    bs.add(base)
    fleet = await store.fleet_for(conn, cand.task, devices_like)
    if not fleet:
        raise plan.PlanError(f"no pole has reported running task {cand.task}")
    targets = plan.assign(fleet, stages, seed=int(cand.sha256[:8], 16))
    bound, why = gates.default_disagreement(cand.metrics, base.metrics)
    b = {**gates.Bounds(max_disagreement=bound).to_dict(), **{k: v for k, v in overrides.items() if v is not None}}
    b["sources"] = {"max_disagreement": "--max-disagreement" if overrides.get("max_disagreement") is not None else why}
    if not settings.bundle_url and not settings.bundle_port:
        settings.bundle_port = free_port(settings.bundle_host)
    ro = {"task": cand.task, "bundle_sha256": cand.sha256, "model_sha256": cand.model_sha256,
          "release": cand.release, "version": cand.version, "base_bundle_sha256": base.sha256,
          "base_model_sha256": base.model_sha256, "base_release": base.release, "stages": stages, "bounds": b,
          "settings": asdict(settings)}
    return await store.create(conn, ro, targets, actor)


async def run(db_url: str, rollout_id: int, key_path: Path, mqtt: MqttOps, bundle_dir: Path, progress=None,
              max_s: float | None = None) -> dict:
    """Run (or resume) the controller of ``rollout_id`` until it ends; the final rollout row."""
    import asyncpg

    from agent.control.signing import load_private_key

    from .controller import Controller
    from .sender import Sender

    key = load_private_key(key_path)
    conn = await asyncpg.connect(db_url)
    try:
        ro = await store.get(conn, rollout_id)
    finally:
        await conn.close()
    if ro is None:
        raise LookupError(f"rollout {rollout_id} not found")
    st = ro["settings"]
    bs = BundleStore(bundle_dir)
    for sha in (ro["bundle_sha256"], ro["base_bundle_sha256"]):
        if not bs.has(sha):
            raise BundleError(f"{bundle_dir}: bundle {sha[:12]}... missing (give the folder `start` used)")
    url = st["bundle_url"] or bs.serve(st["bundle_host"], st["bundle_port"])
    sender = Sender(mqtt.ports, mqtt.user, mqtt.password, mqtt.host)
    try:
        return await Controller(db_url, rollout_id, key, sender, url, progress).run(max_s=max_s)
    finally:
        await sender.close()
        bs.close()
