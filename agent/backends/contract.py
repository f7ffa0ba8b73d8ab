"""The artefact contract: what a model expects, read from the ``manifest.json`` beside it.

The manifest is the only thing that crosses from ``compression/`` to the device.
Loading refuses a model whose bytes do not match the manifest's sha256 (a damaged
or swapped file), and ``require_frontend`` refuses one whose front-end the caller
does not reproduce exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..hashing import sha256_file


# The ONNX metadata key under which compression/export.py writes the contract into the model itself.
EMBEDDED_KEY = "roadside.contract"
CHECKED_KEYS = ("task", "labels", "frontend", "window_seconds")


class ContractError(ValueError):
    """A model artefact that must not be loaded; the message names the file and the key."""


@dataclass(frozen=True)
class Contract:
    model_path: Path
    task: str
    labels: tuple[str, ...]
    frontend: dict[str, Any]
    sha256: str
    window_seconds: float  # audio the model sees per inference (the device's window length)
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def load_contract(model_path: Path | str) -> Contract:
    """Read and check ``manifest.json`` beside ``model_path``."""
    model_path = Path(model_path)
    manifest_path = model_path.parent / "manifest.json"
    if not model_path.is_file():
        raise ContractError(f"{model_path}: model file not found")
    if not manifest_path.is_file():
        raise ContractError(f"{model_path}: no manifest.json beside it; an artefact without its contract is refused")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as e:
        raise ContractError(f"{manifest_path}: not valid JSON ({e})") from None
    for key in ("task", "labels", "frontend", "window_seconds", "files"):
        if key not in manifest:
            raise ContractError(f"{manifest_path}: missing key {key!r}")
    entry = manifest["files"].get(model_path.name)
    if entry is None:
        raise ContractError(f"{manifest_path}: files.{model_path.name} missing: the manifest does not describe this model")
    actual = sha256_file(model_path)
    if actual != entry.get("sha256"):
        raise ContractError(f"{model_path}: sha256 {actual[:12]}... does not match manifest "
                            f"files.{model_path.name}.sha256 {str(entry.get('sha256'))[:12]}...: damaged or altered")
    return Contract(model_path=model_path, task=manifest["task"], labels=tuple(manifest["labels"]),
                    frontend=manifest["frontend"], sha256=actual, window_seconds=float(manifest["window_seconds"]),
                    extra=manifest)


def require_frontend(contract: Contract, frontend: dict[str, Any]) -> None:
    """Refuse a model trained on other features than the ones this device computes."""
    if contract.frontend != frontend:
        diff = sorted(k for k in set(contract.frontend) | set(frontend)
                      if contract.frontend.get(k) != frontend.get(k))
        detail = ", ".join(f"{k}: model {contract.frontend.get(k)!r} vs device {frontend.get(k)!r}" for k in diff)
        raise ContractError(f"{contract.model_path}: front-end mismatch ({detail})")


def check_embedded(contract: Contract, metadata: dict[str, str]) -> None:
    """Refuse a model whose own ONNX metadata contradicts its manifest (e.g. a model file from
    another artefact listed under this manifest's hashes): every key both of them state must agree."""
    raw = metadata.get(EMBEDDED_KEY)
    if raw is None:
        return
    try:
        embedded = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ContractError(f"{contract.model_path}: ONNX metadata {EMBEDDED_KEY} is not valid JSON ({e})") from None
    mine = {"task": contract.task, "labels": list(contract.labels), "frontend": contract.frontend,
            "window_seconds": contract.window_seconds}
    wrong = [k for k in CHECKED_KEYS if k in embedded and embedded[k] != mine[k]]
    if wrong:
        detail = ", ".join(f"{k}: model {embedded[k]!r} vs manifest {mine[k]!r}" for k in wrong)
        raise ContractError(f"{contract.model_path}: its ONNX metadata contradicts manifest.json ({detail})")
