"""The artefact contract: a model is loaded only with an intact manifest that describes it."""

from __future__ import annotations

import json

import pytest

from agent.backends.contract import ContractError, load_contract, require_frontend
from compression.manifest import verify_files, write_manifest

FRONTEND = {"kind": "logmel", "sample_rate": 16000, "n_mels": 64}


@pytest.fixture
def artefact(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not really onnx, but bytes with a hash")
    write_manifest(tmp_path, stage="export", files=[model], inputs={}, recipe={"a": 1}, data_lists={},
                   extra={"task": "noise", "labels": ["x", "y"], "frontend": FRONTEND, "window_seconds": 1.0})
    return model


def test_intact_artefact_loads_with_its_contract(artefact):
    c = load_contract(artefact)
    assert (c.task, c.labels, c.frontend, c.window_seconds) == ("noise", ("x", "y"), FRONTEND, 1.0)
    assert verify_files(artefact.parent / "manifest.json") == []


def test_altered_model_bytes_are_refused(artefact):
    artefact.write_bytes(artefact.read_bytes() + b"!")
    with pytest.raises(ContractError, match="does not match manifest"):
        load_contract(artefact)
    assert verify_files(artefact.parent / "manifest.json") == ["model.onnx"]


def test_missing_manifest_or_key_is_refused(artefact):
    manifest = artefact.parent / "manifest.json"
    data = json.loads(manifest.read_text())
    del data["frontend"]
    manifest.write_text(json.dumps(data))
    with pytest.raises(ContractError, match="missing key 'frontend'"):
        load_contract(artefact)
    manifest.unlink()
    with pytest.raises(ContractError, match="no manifest.json"):
        load_contract(artefact)


def test_frontend_mismatch_is_refused_and_named(artefact):
    c = load_contract(artefact)
    require_frontend(c, dict(FRONTEND))
    with pytest.raises(ContractError, match="n_mels: model 64 vs device 128"):
        require_frontend(c, {**FRONTEND, "n_mels": 128})


def test_recipe_hash_ignores_key_order(tmp_path):
    from compression.manifest import sha256_json

    assert sha256_json({"a": 1, "b": [1, 2]}) == sha256_json({"b": [1, 2], "a": 1})
    assert sha256_json({"a": 1}) != sha256_json({"a": 2})


def _real_artefact(folder, embedded: dict):
    """A real ONNX model whose own metadata says ``embedded``, listed in a manifest for the FRONTEND contract."""
    import torch

    from compression.export import export_onnx

    folder.mkdir()
    model = export_onnx(torch.nn.Flatten(), torch.zeros(1, 1, 2, 2), folder / "model.onnx", embedded)
    write_manifest(folder, stage="export", files=[model], inputs={}, recipe={}, data_lists={},
                   extra={"task": "noise", "labels": ["x", "y"], "frontend": FRONTEND, "window_seconds": 1.0})
    return model


def test_a_model_whose_onnx_metadata_contradicts_its_manifest_is_refused(tmp_path):
    from types import SimpleNamespace

    from agent.tasks import load_model

    cfg = SimpleNamespace(type="onnxruntime", threads=1)
    agrees = _real_artefact(tmp_path / "a", {"task": "noise", "labels": ["x", "y"], "frontend": FRONTEND})
    assert load_model("noise", "logmel", agrees, cfg, tmp_path).backend.name == "onnxruntime"
    other = _real_artefact(tmp_path / "b", {"task": "noise", "labels": ["x", "y"],
                                            "frontend": {**FRONTEND, "n_mels": 128}})
    with pytest.raises(ContractError, match="ONNX metadata contradicts manifest.json .frontend"):
        load_model("noise", "logmel", other, cfg, tmp_path)


@pytest.mark.parametrize("task", ["noise", "vehicles", "congestion"])
def test_every_shipped_model_carries_the_contract_its_manifest_states(task):
    """A shipped ONNX file copied without its manifest still says what it expects."""
    from pathlib import Path

    from compression.export import read_contract

    folder = Path(__file__).resolve().parents[1] / "agent" / "models" / task
    contract = load_contract(folder / "model.onnx")
    for model in sorted(folder.glob("model*.onnx")):
        embedded = read_contract(model)
        assert embedded is not None, model.name
        assert (embedded["task"], embedded["labels"], embedded["frontend"]) == \
               (contract.task, list(contract.labels), contract.frontend), model.name
