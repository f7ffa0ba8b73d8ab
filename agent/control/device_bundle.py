"""Device bundles: ``roadside flash`` writes one per device; ``roadside agent --bundle`` refuses it if altered.

A bundle is a folder, installed on the device as ``/etc/roadside/bundle`` (read-only to the agent)::

    manifest.json     the index: device id, every file below with its sha256, each model's manifest sha256
    manifest.sig      Ed25519 signature of manifest.json by the operator key (agent.control.signing)
    config.yaml       the device config, validated: device.id filled in, model paths -> models/,
                      secret files -> certs/, updates.trusted_keys -> operator.pub
    operator.pub      the operator's public key (the config's trusted key for signed model updates)
    roadside.service  systemd unit;  README.md  what to do with all this
    models/<task>/    the shipped artefact (its manifest and every file it lists) with its own manifest.sig
    certs/            placeholders for the device's secrets (password, TLS key and certificates): not
                      signed, they differ per device and are installed on it; the agent refuses to start
                      while a placeholder is left

Verification (``verify_bundle``), before anything starts, against trusted keys installed on the
device outside the bundle (``--trusted-key``, default /etc/roadside/operator.pub): the index's
signature and every file it lists; nothing unlisted beside it; each model folder's signature,
files and exactly the manifest the index names (a validly signed but different model is
refused); the config's schema, its device id and model paths; no placeholder left in certs/.
Any failure is a ``BundleError`` naming the file.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Iterator

import yaml
from cryptography.hazmat.primitives import serialization

from .. import __version__
from ..config import AgentConfig, load_config, preflight, resolve, resolve_files
from ..hashing import sha256_file
from ..schema import ConfigError, parse_yaml, read_text, validate
from .signing import (SignatureError, check_files, key_id, load_private_key, load_public_key, sign_manifest,
                      verify_manifest)

INDEX, SIG = "manifest.json", "manifest.sig"
KIND = "roadside-device-bundle"
PLACEHOLDER = b"ROADSIDE-PLACEHOLDER"
DEFAULT_TRUSTED_KEY = Path("/etc/roadside/operator.pub")
INSTALL_DIR = "/etc/roadside/bundle"
SECRETS = ("password_file", "tls.ca_file", "tls.cert_file", "tls.key_file")


class BundleError(ValueError):
    """A bundle that must not run, or cannot be written; the message names the file and what was wrong."""


def secret_keys(raw: dict) -> Iterator[tuple[str, dict, str]]:
    """(dotted key, the dict holding it, field) of every secret file a raw config names."""
    brokers = [("uplink.broker", (raw.get("uplink") or {}).get("broker"))]
    brokers += [(f"sources.{i}.broker", s.get("broker")) for i, s in enumerate(raw.get("sources") or [])
                if isinstance(s, dict) and s.get("type") == "mqtt"]
    for prefix, broker in brokers:
        for name in SECRETS:
            holder = broker
            *head, last = name.split(".")
            for h in head:
                holder = holder.get(h) if isinstance(holder, dict) else None
            if isinstance(holder, dict) and holder.get(last):
                yield f"{prefix}.{name}", holder, last


# ------------------------------------------------------------------------------ flash

def flash(config: Path | str, device_id: str, out: Path | str, key: Path | str) -> dict:
    """Write the bundle for ``device_id`` from a firmware config; returns what was written (for the CLI)."""
    config, out = Path(config), Path(out)
    private = load_private_key(key)  # SignatureError names the key file
    raw = _read_yaml(config)
    if not isinstance(raw.get("device"), dict):
        raise ConfigError(str(config), ["device: a device section is required"])
    old_id = raw["device"].get("id")
    raw["device"]["id"] = device_id
    broker = (raw.get("uplink") or {}).get("broker") or {}
    if old_id and broker.get("username") == old_id:  # the city broker's ACL is per device
        broker["username"] = device_id
    validate(AgentConfig, raw, f"{config} (device {device_id})")  # dotted keys, before anything is written
    if out.exists() and any(out.iterdir()):
        raise BundleError(f"{out} exists and is not empty; flash into a new folder")
    out.mkdir(parents=True, exist_ok=True)
    try:
        models = _copy_models(raw, config, out, private, key)
        placeholders = _placeholders(raw, out, old_id, device_id)
        public = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
        (out / "operator.pub").write_bytes(public)
        if raw.get("updates"):
            raw["updates"]["trusted_keys"] = ["operator.pub"]
        text = f"# written by roadside flash {__version__} for device {device_id} from {config.name}\n"
        (out / "config.yaml").write_text(text + yaml.safe_dump(raw, sort_keys=False))
        cfg = load_config(out / "config.yaml")
        preflight(resolve_files(cfg, out / "config.yaml"), str(out / "config.yaml"))
        (out / "roadside.service").write_text(systemd_unit(cfg))
        (out / "README.md").write_text(readme(cfg, models, placeholders))
        files = {n: {"sha256": sha256_file(out / n), "bytes": (out / n).stat().st_size}
                 for n in ("config.yaml", "operator.pub", "roadside.service", "README.md")}
        index = {"schema": 1, "kind": KIND, "device": device_id, "site": cfg.device.site, "roadside": __version__,
                 "created_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                 "source_config": {"file": config.name, "sha256": sha256_file(config)}, "files": files,
                 "models": models, "unsigned": {"certs/": "device secrets, installed per device"}}
        (out / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        sign_manifest(out / INDEX, key)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return {"out": out, "device": device_id, "models": models, "placeholders": placeholders,
            "key_id": key_id(private.public_key())}


def _read_yaml(path: Path) -> dict:
    raw, _ = parse_yaml(read_text(path), str(path))  # the guarded loader: no aliases, duplicates, deep nesting
    if not isinstance(raw, dict):
        raise ConfigError(str(path), ["(top level): a mapping of sections is expected"])
    return raw


def _copy_models(raw: dict, config: Path, out: Path, private, key: Path | str) -> dict:
    """Each task's artefact (manifest + listed files, checked first) into models/<task>/, signed."""
    models = {}
    for task, tcfg in (raw.get("tasks") or {}).items():
        if not tcfg:
            continue
        model = resolve(Path(tcfg["model"]), config)
        src_manifest = model.parent / INDEX
        if not model.is_file() or not src_manifest.is_file():
            raise BundleError(f"tasks.{task}.model: {model} (with {INDEX} beside it) not found")
        try:
            check_files(src_manifest, exclusive=False)  # never sign an artefact that does not match its manifest
        except SignatureError as e:
            raise BundleError(f"tasks.{task}.model: {e}") from None
        listed = json.loads(src_manifest.read_text())["files"]
        if model.name not in listed:
            raise BundleError(f"tasks.{task}.model: {model.name} is not listed in {src_manifest}")
        dest = out / "models" / task
        dest.mkdir(parents=True)
        for name in [INDEX, *listed]:
            shutil.copyfile(model.parent / name, dest / name)
        sign_manifest(dest / INDEX, key)
        tcfg["model"] = f"models/{task}/{model.name}"
        models[task] = {"manifest_sha256": sha256_file(dest / INDEX), "file": model.name,
                        "sha256": listed[model.name]["sha256"]}
    return models


def _placeholders(raw: dict, out: Path, old_id: str | None, device_id: str) -> dict[str, str]:
    """Secret paths -> certs/<name> (the old device id in a name becomes the new one), placeholder files."""
    made = {}
    for dotted, holder, field in secret_keys(raw):
        name = Path(str(holder[field])).name
        if old_id:
            name = name.replace(old_id, device_id)
        rel = f"certs/{name}"
        (out / "certs").mkdir(exist_ok=True)
        (out / rel).write_bytes(PLACEHOLDER + f": replace with the file for {dotted} of device {device_id}\n".encode())
        holder[field] = rel
        made[dotted] = rel
    return made


def systemd_unit(cfg: AgentConfig) -> str:
    state = cfg.device.state_dir
    writable = f"ReadWritePaths={state}\n" if state.is_absolute() else ""
    managed = "StateDirectory=roadside\nStateDirectoryMode=0750\n" if str(state) == "/var/lib/roadside" else ""
    return (f"[Unit]\nDescription=roadside edge agent ({cfg.device.id}, {cfg.device.site})\n"
            "Wants=network-online.target\nAfter=network-online.target\n\n"
            "[Service]\nType=simple\nUser=roadside\nGroup=roadside\nSupplementaryGroups=audio video\n"
            f"ExecStart=/opt/roadside/bin/roadside agent --bundle {INSTALL_DIR} --trusted-key {DEFAULT_TRUSTED_KEY}\n"
            "ExecReload=/bin/kill -HUP $MAINPID\nRestart=on-failure\nRestartSec=10\n"
            "# a refused bundle (3) or config (2) does not fix itself by restarting\nRestartPreventExitStatus=2 3\n"
            f"{managed}{writable}NoNewPrivileges=yes\nProtectSystem=strict\nProtectHome=yes\nPrivateTmp=yes\n\n"
            "[Install]\nWantedBy=multi-user.target\n")


def readme(cfg: AgentConfig, models: dict, placeholders: dict[str, str]) -> str:
    certs = "".join(f"   - `{rel}` ({key})\n" for key, rel in placeholders.items()) or "   - none (no secrets)\n"
    names = ", ".join(f"{t} ({m['file']})" for t, m in models.items()) or "none"
    return (f"# roadside bundle for device {cfg.device.id} ({cfg.device.site})\n\n"
            f"Written by `roadside flash`; models: {names}.\n"
            "Every file except `certs/` is signed (`manifest.json` + `manifest.sig`); the agent refuses to\n"
            "start if any of them was altered. To change anything, flash a new bundle.\n\n"
            "1. Install the operator's public key on the device, from a trusted channel, as\n"
            f"   `{DEFAULT_TRUSTED_KEY}` (root-owned): the agent checks the bundle against it.\n"
            f"2. Copy this folder to `{INSTALL_DIR}` (root-owned, read-only to user `roadside`).\n"
            "3. Replace the placeholders with this device's secrets:\n" + certs +
            "4. `systemctl enable --now $PWD/roadside.service`, or in a container:\n"
            f"   `docker run ... -v /etc/roadside:/etc/roadside:ro roadside-agent --bundle {INSTALL_DIR} "
            f"--trusted-key {DEFAULT_TRUSTED_KEY}`\n\n"
            f"Check it by hand: `roadside agent --bundle {INSTALL_DIR} --trusted-key {DEFAULT_TRUSTED_KEY} --verify-only`.\n")


# ----------------------------------------------------------------------------- verify

def verify_bundle(folder: Path | str, trusted_keys: list[Path | str]) -> Path:
    """The bundle's config path once everything checks out; ``BundleError`` naming the file otherwise."""
    folder = Path(folder)
    index_path = folder / INDEX
    if not index_path.is_file():
        raise BundleError(f"{folder}: not a bundle (no {INDEX})")
    try:
        keys = [load_public_key(p) for p in trusted_keys]
    except SignatureError as e:
        raise BundleError(f"trusted key: {e}") from None
    if not keys:
        raise BundleError("no trusted key to check the bundle against (--trusted-key)")
    try:
        index = verify_manifest(index_path, keys, exclusive=False).manifest
    except SignatureError as e:
        raise _refused(index_path, e) from None
    if index.get("kind") != KIND:
        raise BundleError(f"{index_path}: kind {index.get('kind')!r}, not a device bundle")
    allowed = set(index["files"]) | {INDEX, SIG, "models", "certs"}
    extra = sorted(p.name for p in folder.iterdir() if p.name not in allowed)
    if extra:
        raise BundleError(f"{folder}: {extra} not listed in the signed {INDEX}")
    _verify_models(folder, index, keys)
    return _verify_config(folder, index)


def _refused(manifest: Path, e: SignatureError) -> BundleError:
    """signing names the file whose sha256 differs; a failed signature it pins on manifest.sig: name both."""
    msg = str(e)
    if str(manifest) in msg or "sha256" in msg or "not listed" in msg:
        return BundleError(msg)
    return BundleError(f"{manifest}: altered, or not signed by a trusted key ({msg})")


def _verify_models(folder: Path, index: dict, keys) -> None:
    models_dir = folder / "models"
    present = {p.name for p in models_dir.iterdir()} if models_dir.is_dir() else set()
    if present != set(index["models"]):
        raise BundleError(f"{models_dir}: holds {sorted(present)}, the signed {INDEX} lists {sorted(index['models'])}")
    for task, entry in index["models"].items():
        manifest = models_dir / task / INDEX
        try:
            verify_manifest(manifest, keys, exclusive=True)
        except SignatureError as e:
            raise _refused(manifest, e) from None
        if sha256_file(manifest) != entry["manifest_sha256"]:
            raise BundleError(f"{manifest}: signed, but not the model this bundle was flashed with")


def _verify_config(folder: Path, index: dict) -> Path:
    path = folder / "config.yaml"
    try:
        cfg = load_config(path)
    except ConfigError as e:
        raise BundleError(str(e)) from None
    if cfg.device.id != index["device"]:
        raise BundleError(f"{path}: device.id {cfg.device.id!r}, the signed {INDEX} says {index['device']!r}")
    for task, entry in index["models"].items():
        tcfg = cfg.tasks.get(task)
        expected = folder / "models" / task / entry["file"]
        if tcfg is None or resolve(tcfg.model, path).resolve() != expected.resolve():
            raise BundleError(f"{path}: tasks.{task}.model does not name the bundle's {expected}")
    for dotted, holder, field in secret_keys(_read_yaml(path)):
        secret = folder / holder[field] if not Path(holder[field]).is_absolute() else Path(holder[field])
        try:
            with open(secret, "rb") as f:
                head = f.read(len(PLACEHOLDER))
        except OSError as e:
            raise BundleError(f"{secret} ({dotted}): {e.strerror or e}") from None
        if head == PLACEHOLDER:
            raise BundleError(f"{secret} ({dotted}): still the placeholder written by roadside flash; "
                              f"install this device's file there")
    return path
