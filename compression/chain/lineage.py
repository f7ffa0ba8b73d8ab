"""Per-stage lineage: a small record beside each stage's output, and the cache key for re-runs.

``<output>.lineage.json`` says which stage made the file, from what (the sha256 of the stage's
settings and of each input) and what it measured. A re-run with the same settings and inputs
finds the record, checks the output's own sha256 and reuses the file instead of making it again;
anything else (no record, other settings or inputs, a changed or missing file) makes it anew.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from compression.manifest import sha256_file, sha256_json

log = logging.getLogger(__name__)
FORMAT = "roadside-lineage/1"


def record_path(output: Path) -> Path:
    return output.with_name(output.name + ".lineage.json")


def key(stage: str, config: Any, inputs: dict[str, str]) -> str:
    """What a stage's output is a function of: its name, its settings and the sha256 of each input."""
    return sha256_json({"stage": stage, "config_sha256": sha256_json(config), "inputs": inputs})


def write(output: Path, stage: str, config: Any, inputs: dict[str, str], metrics: dict | None = None,
          seconds: float | None = None) -> dict:
    """Record how ``output`` (already written) was made."""
    rec = {"format": FORMAT, "stage": stage, "key": key(stage, config, inputs),
           "config_sha256": sha256_json(config), "inputs": inputs,
           "output": {"file": output.name, "sha256": sha256_file(output)},
           "metrics": metrics or {}, "seconds": None if seconds is None else round(seconds, 1),
           "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    record_path(output).write_text(json.dumps(rec, indent=2, sort_keys=True) + "\n")
    return rec


def reusable(output: Path, stage: str, config: Any, inputs: dict[str, str]) -> dict | None:
    """The record when ``output`` was made by this stage from these settings and inputs and is unchanged;
    None (and why, in the log) otherwise."""
    path = record_path(output)
    if not path.exists():
        return None
    rec, why = _check(path, output, key(stage, config, inputs))
    if why is not None:
        log.info("%s: not reused: %s", output, why)
        return None
    log.info("%s: reused (%s, same settings and inputs)", output, stage)
    return rec


def _check(path: Path, output: Path, want: str) -> tuple[dict | None, str | None]:
    """(the record, None) when it holds for ``output`` and key ``want``; else (None, why not)."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return None, f"unreadable record ({e})"
    if not isinstance(rec, dict) or rec.get("format") != FORMAT:
        return None, "not a lineage record of this format"
    if rec.get("key") != want:
        return None, "made from other settings or inputs"
    if not output.is_file() or sha256_file(output) != rec.get("output", {}).get("sha256"):
        return None, "the file changed or is missing since its record was written"
    return rec, None


def save_torch(path: Path, state: dict) -> Path:
    """A trained stage's checkpoint, with the torch RNG state after it: a re-run that reuses the stage
    restores that state, so every later stage draws the same numbers as in a run that trained it."""
    import torch

    torch.save({**state, "torch_rng_state": torch.get_rng_state()}, path)
    return path


def load_torch(path: Path) -> dict:
    """A checkpoint written by ``save_torch``, its RNG state restored."""
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    torch.set_rng_state(ckpt.pop("torch_rng_state"))
    return ckpt


def train_or_reuse(path: Path, stage: str, config: Any, inputs: dict[str, str], model, fit,
                   companions: tuple = ()) -> list[dict]:
    """Train ``model`` in place with ``fit()`` (which returns its history) and save it at ``path`` with its
    record; or, when the record matches, load it instead. ``companions`` (objects with ``state_dict`` /
    ``load_state_dict``, such as a cache of the teacher's outputs) are saved and restored with it, and so
    is the RNG state: the stages after a reused one compute what they would after a trained one."""
    if reusable(path, stage, config, inputs):
        ckpt = load_torch(path)
        model.load_state_dict(ckpt["state_dict"], strict=True)
        for c, state in zip(companions, ckpt["companions"], strict=True):
            c.load_state_dict(state)
        return ckpt["history"]
    t_start = time.time()
    history = fit()
    save_torch(path, {"state_dict": model.state_dict(), "history": history,
                      "companions": [c.state_dict() for c in companions]})
    write(path, stage, config, inputs, history[-1] if history else {}, time.time() - t_start)
    return history
