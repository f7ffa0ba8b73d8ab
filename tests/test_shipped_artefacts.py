"""Every shipped model (``agent/models/<task>/``, committed) is intact, traceable, honest about its gate, and
runs in the agent.

The artefacts are found, not named: each ``agent/models/*/manifest.json`` is one, so a task
shipped tomorrow is checked by every test here with no edit. What only one task has (the
congestion baselines and warnings, the vehicles held-out split, the noise folds' clip list)
is tested in that task's own files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.backends.contract import EMBEDDED_KEY, load_contract
from agent.config import ClassRule, OnnxBackendConfig, RuleConfig
from agent.hashing import sha256_file
from agent.tasks import load_model, registry, smoke_test
from agent.tasks.registry import TaskContext
from compression import tasks as compression_tasks
from compression.manifest import sha256_json
from compression.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "agent" / "models"
MANIFESTS = sorted(MODELS.glob("*/manifest.json"))
PRECISIONS = ("fp32", "fp16", "int8")
MAX_FILE_BYTES = 5 * 2**20  # each file is committed to git
GATE_OUTCOME = ("passed", "failures")  # the report's gate entry: these, then the thresholds it applied
SHA256_HEX = set("0123456789abcdef")
TOOLS = {"python", "numpy", "torch", "onnx", "onnxruntime", "roadside"}  # versions every manifest records


@dataclass(frozen=True)
class Artefact:
    folder: Path
    manifest: dict[str, Any]
    report: dict[str, Any]

    @property
    def task(self) -> str:
        return self.manifest["task"]


@pytest.fixture(scope="module", params=MANIFESTS, ids=[p.parent.name for p in MANIFESTS])
def artefact(request) -> Artefact:
    folder = request.param.parent
    manifest = json.loads(request.param.read_text())
    report_file = folder / "report.json"
    assert report_file.is_file(), f"{folder.name}: no report.json beside its manifest"
    return Artefact(folder, manifest, json.loads(report_file.read_text()))


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= SHA256_HEX


def _frontends(node: Any) -> list[Any]:
    """Every value under a key named ``frontend`` in a recipe (where it lives depends on the task's schema)."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "frontend"] + [f for v in node.values() for f in _frontends(v)]
    if isinstance(node, list):
        return [f for v in node for f in _frontends(v)]
    return []


def _committed_recipe(a: Artefact):
    path = REPO / "compression" / "recipes" / a.manifest["inputs"]["recipe_file"]
    assert path.is_file(), f"{a.folder.name}: its recipe {path.relative_to(REPO)} is not committed"
    return load_recipe(path)


def test_models_are_shipped_and_each_names_a_task_both_halves_know():
    assert MANIFESTS, f"no manifest.json under {MODELS}"
    for path in MANIFESTS:
        task = json.loads(path.read_text())["task"]
        assert task == path.parent.name, f"{path}: task {task!r} shipped in the folder {path.parent.name!r}"
        compression_tasks.get(task)  # the compression side can rebuild and evaluate it
        assert registry.get(task).has_model  # the agent runs it


def test_every_file_the_manifest_lists_matches_its_sha256(artefact):
    files = artefact.manifest["files"]
    assert {"model.onnx", "report.json"} <= set(files)
    for name, entry in files.items():
        path = artefact.folder / name
        assert path.is_file(), f"{artefact.folder.name}/{name} is listed but missing"
        assert sha256_file(path) == entry["sha256"], f"{artefact.folder.name}/{name}: sha256 differs"
        assert path.stat().st_size == entry["bytes"], f"{artefact.folder.name}/{name}: size differs"


def test_every_file_in_the_folder_is_one_the_manifest_lists(artefact):
    # the manifest itself (and a signature of it, manifest.sig) sign for the rest: every other file is hashed
    on_disk = {p.name for p in artefact.folder.iterdir() if not p.name.startswith("manifest.")}
    assert on_disk == set(artefact.manifest["files"])


def test_every_shipped_file_is_small_enough_to_commit(artefact):
    for name in artefact.manifest["files"]:
        assert (artefact.folder / name).stat().st_size < MAX_FILE_BYTES, f"{artefact.folder.name}/{name}"


def test_the_onnx_metadata_contract_is_the_manifests(artefact):
    import onnx

    models = [name for name in artefact.manifest["files"] if name.endswith(".onnx")]
    for name in models:
        contract = load_contract(artefact.folder / name)  # the manifest's contract, the file's hash checked
        metadata = {p.key: p.value for p in onnx.load(str(artefact.folder / name)).metadata_props}
        assert EMBEDDED_KEY in metadata, f"{artefact.folder.name}/{name}: no {EMBEDDED_KEY} in its ONNX metadata"
        embedded = json.loads(metadata[EMBEDDED_KEY])
        assert {"task", "labels", "frontend"} <= set(embedded), f"{artefact.folder.name}/{name}: {sorted(embedded)}"
        assert (contract.task, list(contract.labels)) == (embedded["task"], embedded["labels"])
        for key, value in embedded.items():  # every key both state agrees (name, version, outputs, ...)
            if key in artefact.manifest:
                assert value == artefact.manifest[key], f"{artefact.folder.name}/{name}: {key}"


def test_the_report_has_plots_beside_its_json(artefact):
    plots = [name for name in artefact.manifest["files"] if name.endswith(".png")]
    assert plots, f"{artefact.folder.name}: no plot beside report.json"
    for name in plots:
        assert (artefact.folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{artefact.folder.name}/{name}"


def test_each_target_names_a_shipped_file_and_a_precision(artefact):
    targets = artefact.manifest["targets"]
    assert targets["onnxruntime"]["file"] == "model.onnx"  # the file the agent's default backend loads
    for backend, target in targets.items():
        assert target["file"].endswith(".onnx") and target["file"] in artefact.manifest["files"], backend
        assert target["precision"] in PRECISIONS, (backend, target["precision"])
    assert artefact.report["targets"] == targets


def test_the_report_scores_every_stage_the_manifest_records(artefact):
    m, r = artefact.manifest, artefact.report
    assert (r["task"], r["name"], r["version"]) == (m["task"], m["name"], m["version"])
    assert list(r["stages"]) == list(m["metrics"]) and r["shipped"]["cpu"] in r["stages"]
    for stage, metrics in m["metrics"].items():
        assert metrics, stage
        for key, value in metrics.items():
            if key in r["stages"][stage]:
                assert r["stages"][stage][key] == value, (stage, key)
    # the shipped model is the CPU stage's, within the recipe's parameter budget
    assert m["params"] == r["stages"][r["shipped"]["cpu"]]["params"] <= m["recipe"]["budget"]["max_params"]
    assert m["size_bytes"] == m["files"]["model.onnx"]["bytes"]


def test_the_gate_passed_and_the_report_says_why(artefact):
    gate = artefact.report["gate"]
    assert gate["passed"] is True and gate["failures"] == [] and artefact.manifest["gate_passed"] is True
    # the thresholds it was held to are the recipe's
    thresholds = {k: v for k, v in gate.items() if k not in GATE_OUTCOME}
    assert thresholds, f"{artefact.folder.name}: the report's gate names no threshold"
    recipe_gate = artefact.manifest["recipe"]["gate"]
    assert {k: recipe_gate.get(k, "(not in the recipe)") for k in thresholds} == thresholds


def test_the_manifest_records_its_lineage(artefact):
    m = artefact.manifest
    assert m["recipe_sha256"] == sha256_json(m["recipe"]) and m["recipe"]["task"] == m["task"]
    assert m["data_lists"] and all(_is_sha256(v) for v in m["data_lists"].values()), m["data_lists"]
    assert TOOLS <= set(m["tools"]) and all(m["tools"].values()), m["tools"]
    assert all(_is_sha256(v) for k, v in m["inputs"].items() if k.endswith("_sha256")) and m["command"]
    task = compression_tasks.get(m["task"])
    if task.checkpoint_folds is not None:  # a task with folds: the teacher's are among those recorded
        teacher_folds = task.load("checkpoint_folds")(REPO / m["recipe"]["teacher"]["checkpoint"])
        assert teacher_folds and set(teacher_folds) <= set(m["training_folds"])


def test_a_committed_teacher_that_says_it_taught_this_model_is_the_one_its_manifest_names(artefact):
    """The benchmarks time each student beside its teacher from a fresh clone, finding the teacher by the
    sha256 the student's manifest names: a rebuilt student must come with its teacher (a stale one would
    leave the benchmark rows skipping without a word)."""
    from compression.manifest import sha256_file

    taught = [p.parent for p in sorted((REPO / "compression" / "teachers" / "weights").glob("*/manifest.json"))
              if json.loads(p.read_text()).get("taught", {}).get("name") == artefact.manifest["name"]]
    for folder in taught:
        claims = json.loads((folder / "manifest.json").read_text())["taught"]
        assert claims["model_sha256"] == artefact.manifest["files"]["model.onnx"]["sha256"], folder.name
        assert sha256_file(folder / "teacher.pt") == artefact.manifest["inputs"]["teacher_sha256"], folder.name


def test_it_is_what_the_committed_recipe_builds(artefact):
    recipe = _committed_recipe(artefact)
    schema = compression_tasks.get(artefact.task).load("recipe")
    assert type(recipe) is schema
    # read back through today's schema: a field added since (with its default) is not a different recipe
    assert schema.model_validate(artefact.manifest["recipe"]) == recipe
    assert artefact.manifest["frontend"] in _frontends(recipe.model_dump())


def test_the_agent_loads_it_and_a_smoke_inference_passes(artefact, tmp_path):
    """As the agent builds a task (agent.taskset.build_task): contract checks, backend, the task's own
    front-end check and dry run, then the smoke inference."""
    name = artefact.task
    spec = registry.get(name)
    path = artefact.folder / "model.onnx"
    model = load_model(name, spec.frontend, path, OnnxBackendConfig(type="onnxruntime"), tmp_path / "engines")
    labels = model.contract.labels
    cfg = spec.config(model=path, rule=RuleConfig(cooldown_s=0, classes={labels[-1]: ClassRule(threshold=0.5)}))
    task = spec.factory(cfg, model, TaskContext(16_000, "UTC", tmp_path))
    assert task.model is model and model.example_shape is not None
    smoke_test(model)
    out = np.asarray(model.backend.run(np.zeros(model.example_shape, np.float32)))
    assert out.shape == (1, len(labels)) and np.isfinite(out).all()
