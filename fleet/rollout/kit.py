"""Toy signed bundles and a simulated fleet with the rollout protocol: for the tests and the bench.

A toy bundle carries a random "model.onnx" (the simulated poles never load it), a manifest with
task, version, release and metrics, and the operator's signature: exactly what the agent's
bundle check reads, so the simulated poles verify it as the agent would.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from pathlib import Path

from agent.control.bundle_io import make_bundle
from agent.control.signing import load_public_key, sign_manifest


def toy_bundle(folder: Path, key: Path, release: int, version: str, task: str = "noise",
               metrics: dict | None = None, size: int = 4096) -> Path:
    """``folder/<version>.tar``: a signed bundle of a fake model (``size`` random bytes)."""
    src = folder / f"{version}-src"
    src.mkdir(parents=True, exist_ok=True)
    model = os.urandom(size)
    (src / "model.onnx").write_bytes(model)
    manifest = {"schema": 1, "task": task, "name": f"toy-{task}", "version": version, "release": release,
                "files": {"model.onnx": {"sha256": hashlib.sha256(model).hexdigest(), "bytes": size}},
                "metrics": metrics if metrics is not None else {"int8_cpu": {"agreement": 0.93, "accuracy": 0.78}}}
    (src / "manifest.json").write_text(json.dumps(manifest, indent=1))
    sign_manifest(src / "manifest.json", key)
    out = folder / f"{version}.tar"
    make_bundle(src, out)
    return out


def sim_config(stack, devices: dict[str, str], public_key: Path, behaviours: dict, baseline: Path, **kw):
    """A ``SimConfig`` for ``{device: site}`` registered on ``stack``, every pole running ``baseline``
    (a bundle) and answering the rollout protocol."""
    from ..simulator import SimConfig
    from .bundles import read_bundle

    base = read_bundle(baseline)
    pw = stack.add_devices(devices)
    return SimConfig(devices={d: (s, pw[d]) for d, s in devices.items()}, ports=stack.mqtt_ports, rate=0.0,
                     commands=True, trusted_keys=[load_public_key(public_key)], behaviours=behaviours,
                     health_every_s=3600.0, summary_every_s=3600.0, release=base.release,
                     model={"sha256": base.model_sha256, "version": base.version}, **kw)


async def wait_known(db_url: str, devices: list[str], timeout: float = 60.0) -> None:
    """Until every pole in ``devices`` is in ``devices`` online with its models (its birth stored)."""
    import asyncpg

    conn = await asyncpg.connect(db_url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            n = await conn.fetchval("SELECT count(*) FROM devices WHERE online AND models ? 'noise' AND "
                                    "device = ANY($1::text[])", devices)
            if n == len(devices):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{n} of {len(devices)} poles online in the database after {timeout} s")
            await asyncio.sleep(0.3)
    finally:
        await conn.close()


async def heartbeats(sim, every_s: float = 20.0) -> None:
    """Every pole's health message every ``every_s`` (as the agent's ``heartbeat_s``); run as a task."""
    while True:
        for p in sim.poles:
            await p.health()
        await asyncio.sleep(every_s)
