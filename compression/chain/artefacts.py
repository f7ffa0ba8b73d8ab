"""The shipped folder of every chain: the model each target gets, report.json, the plots, manifest.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from compression.chain.plots import write_json
from compression.chain.tail import Choice, Outcome, Tail
from compression.chain.targets import ONNXRUNTIME, TARGETS
from compression.export import stamp_contract
from compression.manifest import write_manifest

METRIC_KEYS = ("accuracy", "macro_f1", "latency", "params", "agreement", "confidence")


def ship_models(out: Path, choices: dict[str, Choice], contract: dict) -> tuple[list[Path], dict]:
    """The CPU model as ``out/model.onnx`` and each other target's own model beside it, each with the whole
    feature contract in its ONNX metadata (INT8 files lose it); returns the files and the manifest's targets."""
    files = [stamp_contract(choices[ONNXRUNTIME.name].path, contract, out / ONNXRUNTIME.file)]
    targets = {}
    for t in TARGETS:
        c = choices[t.name]
        own = t is not ONNXRUNTIME and c.path is not None
        if own:
            files.append(stamp_contract(c.path, contract, out / t.file))
        elif t is not ONNXRUNTIME and (out / t.file).exists():
            (out / t.file).unlink()  # a model from an earlier run must not linger beside this one
        targets[t.name] = {"file": t.file if own else ONNXRUNTIME.file, "precision": c.precision, "why": c.why}
    return files, targets


def headline(stage: dict) -> dict:
    """What the manifest keeps of a stage (the agent and the rollout gates read it)."""
    return {m: stage.get(m) for m in METRIC_KEYS}


def write_artefacts(tail: Tail, outcome: Outcome, out: Path, *, parity: dict, history: list, seconds: float,
                    inputs: dict, data_lists: dict, licence: str, plots: Callable[[dict, str], list[Path]],
                    report_extra: dict[str, Any] | None = None, manifest_extra: dict[str, Any] | None = None,
                    metrics: Callable[[dict], dict] = headline) -> dict:
    """Writes report.json, the plots (``plots(stage records, shipped stage)``) and the manifest; returns the report."""
    recipe, failures = tail.recipe, outcome.failures
    results = tail.stages.written()
    shipped = outcome.choices[ONNXRUNTIME.name].stage
    files, targets = ship_models(out, outcome.choices, tail.contract)
    report = {
        "task": recipe.task, "name": recipe.name, "version": recipe.version,
        "gate": {"passed": not failures, "failures": failures, **recipe.gate.model_dump()},
        "shipped": {t.label.lower(): outcome.choices[t.name].stage for t in TARGETS},  # {"cpu": .., "tensorrt": ..}
        "targets": targets, "int8_rejected": outcome.rejected,
        "stages": results, "latency_unit": tail.stages.unit, "onnx_parity": parity, "engine": outcome.engine,
        "history": history, "seconds": round(seconds, 1),
        **(report_extra or {}),
        "licence": licence,
    }
    files.append(write_json(report, out / "report.json"))
    files += plots(results, shipped)
    write_manifest(
        out, stage="compress", files=files, inputs=inputs, recipe=recipe.model_dump(), data_lists=data_lists,
        extra={**tail.contract, "targets": targets, "params": results[shipped]["params"],
               "size_bytes": files[0].stat().st_size, "metrics": {k: metrics(v) for k, v in results.items()},
               "gate_passed": not failures, "licence": licence, **(manifest_extra or {})},
    )
    return report
