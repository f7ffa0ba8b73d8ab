"""Lineage of every artefact: what went in (data lists, recipe, inputs), what came out, with which tools.

A manifest sits beside each artefact as ``manifest.json``. Hashes are sha256 of
file bytes, or of canonical JSON (sorted keys, no spaces) for in-memory objects,
so the same recipe always hashes the same whatever order a YAML file used.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from agent.hashing import sha256_file

_TOOLS = ("numpy", "scipy", "torch", "onnx", "onnxruntime", "torch-pruning", "roadside")


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj)).hexdigest()


def sha256_bytes(data) -> str:
    """sha256 of an in-memory buffer (bytes, or an array's raw C-ordered bytes)."""
    return hashlib.sha256(memoryview(data).cast("B")).hexdigest()


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def write_manifest(out_dir: Path, *, stage: str, files: list[Path], inputs: dict[str, str],
                   recipe: dict[str, Any], data_lists: dict[str, str], extra: dict[str, Any]) -> Path:
    """Write ``out_dir/manifest.json``: every output file's sha256 and size, plus lineage."""
    manifest = {
        "schema": 1,
        "stage": stage,
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "files": {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in files},
        "inputs": inputs,
        "recipe": recipe,
        "recipe_sha256": sha256_json(recipe),
        "data_lists": data_lists,
        "tools": tool_versions(),
        "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:]),
        **extra,
    }
    path = out_dir / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


def verify_files(manifest_path: Path) -> list[str]:
    """Names of files whose sha256 no longer matches the manifest (empty when intact)."""
    manifest = json.loads(Path(manifest_path).read_text())
    bad = []
    for name, info in manifest.get("files", {}).items():
        p = Path(manifest_path).parent / name
        if not p.is_file() or sha256_file(p) != info["sha256"]:
            bad.append(name)
    return bad
