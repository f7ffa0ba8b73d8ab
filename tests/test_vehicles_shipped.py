"""The shipped vehicles model (agent/models/vehicles/, committed): honest about its numbers, and working in
the agent on real crops it never saw in training (the recorded held-out split).

What every shipped model must be (intact, its contract, lineage, gate, targets, plots, the agent's smoke
inference) is tested once for all of them in test_shipped_artefacts.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.backends.contract import load_contract
from agent.config import ClassRule, OnnxBackendConfig, RuleConfig
from agent.features.image import decode_image
from agent.payloads import ImageFrame
from agent.tasks import load_model
from agent.tasks.vehicles import VehiclesTask, VehiclesTaskConfig
from compression.tasks.vehicles import dataset as vehicles
from compression.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "agent" / "models" / "vehicles"
RECIPE = REPO / "compression" / "recipes" / "vehicles.yaml"


@pytest.fixture(scope="module")
def manifest() -> dict:
    if not (SHIPPED / "model.onnx").is_file():
        pytest.fail(f"{SHIPPED}/model.onnx is missing: it is committed; rebuild it with "
                    f"roadside compress --recipe {RECIPE.relative_to(REPO)}")
    return json.loads((SHIPPED / "manifest.json").read_text())


@pytest.fixture(scope="module")
def held_out(data_dir, manifest) -> list:
    """The recorded validation split: the recipe's split file, checked against the data and the manifest."""
    recipe = load_recipe(RECIPE)
    split = vehicles.split_for(vehicles.find_root(data_dir), REPO / recipe.data.split_file, recipe.seed,
                               recipe.data.val_fraction)
    assert manifest["data_lists"]["split"] == split.sha256
    return list(split.val)


def test_shipped_model_scores_what_its_report_says_on_the_held_out_split(manifest, held_out, data_dir):
    from compression.evaluate import load_scorer
    from compression.tasks.vehicles.evaluate import evaluate_vehicles

    report = json.loads((SHIPPED / "report.json").read_text())
    scored = report["stages"][report["shipped"]["cpu"]]
    result = evaluate_vehicles(load_scorer(SHIPPED / "model.onnx"), vehicles.find_root(data_dir), items=held_out)
    assert result["n"] == len(held_out) == scored["n"]
    assert result["accuracy"] == pytest.approx(scored["accuracy"], abs=1e-9)
    assert result["accuracy"] >= 0.95
    assert 100 * (report["stages"]["teacher"]["accuracy"] - result["accuracy"]) <= 1.5


def test_shipped_model_classifies_held_out_crops_in_the_agent(manifest, held_out, tmp_path):
    """Through the agent's own path: manifest checks, front-end, onnxruntime, the alert rule."""
    labels = load_contract(SHIPPED / "model.onnx").labels
    rule = RuleConfig(cooldown_s=0, classes={name: ClassRule(threshold=0.5) for name in labels})
    model = load_model("vehicles", "image", SHIPPED / "model.onnx", OnnxBackendConfig(type="onnxruntime"), tmp_path)
    task = VehiclesTask(VehiclesTaskConfig(model=SHIPPED / "model.onnx", rule=rule), model)
    rng = np.random.default_rng(0)
    crops = [held_out[i] for i in sorted(rng.permutation(len(held_out))[:60])]
    hits = []
    for k, (path, label) in enumerate(crops):
        detections = task.handle(ImageFrame(f"cam{k}", 1000.0 * k, decode_image(path)))  # one camera each
        hits.append([d.cls for d in detections] == [labels[label]])
    assert len({label for _, label in crops}) == len(labels)
    assert np.mean(hits) >= 0.9, f"{sum(hits)}/{len(hits)} crops alerted as their class"
