"""Quantisation-aware training (compression/qat.py): fake-quantised Conv/Linear, exported as TensorRT's Q/DQ form."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from agent.backends.onnx import OnnxBackend
from compression import qat
from compression.export import export_onnx, read_contract


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten())
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.body(x))


@pytest.fixture
def calib() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(12, 1, 16, 20)).astype(np.float32)


def test_every_conv_and_linear_is_wrapped_with_ranges_from_the_calibration(calib):
    model = Tiny()
    assert qat.prepare(model, calib, percentile=100.0) == 3
    first = model.body[0]
    assert isinstance(first, qat.QuantLayer) and isinstance(model.head, qat.QuantLayer)
    assert isinstance(first.layer, nn.Conv2d) and isinstance(model.head.layer, nn.Linear)
    assert first.input_amax == pytest.approx(float(np.abs(calib).max()), rel=1e-5)  # percentile 100: the max


def test_fake_quantised_outputs_are_close_to_float_and_training_still_learns(calib):
    torch.manual_seed(0)
    model = Tiny()
    x = torch.from_numpy(calib)
    ref = model.eval()(x).detach()
    qat.prepare(model, calib)
    fq = model(x).detach()
    assert not torch.equal(fq, ref) and torch.allclose(fq, ref, atol=0.05 * float(ref.abs().max()))
    nn.functional.cross_entropy(model.train()(x), torch.tensor([0, 1, 2, 3] * 3)).backward()
    # the rounding passes gradients straight through: every weight still learns
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_the_export_is_symmetric_int8_qdq_with_constant_scales_and_runs_in_onnxruntime(calib, tmp_path):
    model = Tiny()
    qat.prepare(model, calib)
    qat.freeze(model)
    model.eval()
    contract = {"task": "noise", "labels": ["a", "b", "c", "d"]}
    path = export_onnx(model, torch.from_numpy(calib[:1]), tmp_path / "qat.onnx", contract)
    graph = onnx.load(str(path)).graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:  # in graph order: an Identity's input is known before it
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in consts:  # the exporter's shared initialisers
            consts[node.output[0]] = consts[node.input[0]]
    quants = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    assert len(quants) == 6  # input and weight of each of the 3 layers
    for q in quants:
        scale, zero = consts[q.input[1]], consts[q.input[2]]  # constants: TensorRT refuses computed scales
        assert zero.dtype == np.int8 and not zero.any() and (scale > 0).all()
    assert read_contract(path) == contract
    with torch.inference_mode():
        want = model(torch.from_numpy(calib)).numpy()
    got = OnnxBackend(path, threads=1)(calib)
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))


def test_no_calibration_is_refused():
    with pytest.raises(ValueError, match="calibration"):
        qat.prepare(Tiny(), np.zeros((0, 1, 16, 20), np.float32))


def test_layer_names_are_the_onnx_export_s_so_keep_float_selects_the_same_layers_as_post_training(tmp_path):
    """quantise.tensorrt.keep_float patterns are written against ONNX node names; QAT must read them
    the same way, on the real student architecture (mn04 slimmed)."""
    from compression.tasks.noise.chain import _example
    from compression.recipe import load_recipe
    from compression.tasks.noise.students import BUILDERS
    from compression.tasks.noise.mn04 import MN
    from test_compress_pipeline import REPO

    recipe = load_recipe(REPO / "compression" / "recipes" / "noise.yaml")
    torch.manual_seed(0)
    student = BUILDERS["slim_teacher"](MN(n_classes=10).eval(), 10, 103, recipe.student).eval()
    example = _example(recipe.student.frontend, 1.0)
    exported = export_onnx(student, example, tmp_path / "s.onnx", {"task": "noise"})
    nodes = {n.name for n in onnx.load(str(exported)).graph.node if n.op_type in ("Conv", "Gemm")}
    layers = {qat.onnx_node_name(student, n) for n, m in student.named_modules()
              if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert layers == nodes and len(nodes) == 64

    calib = np.random.default_rng(0).normal(size=(2, *example.shape[1:])).astype(np.float32)
    early = r"^/model/body/features/features\.[0-4]/"
    wrapped = qat.prepare(student, calib, 99.99, keep_float=[early])
    assert wrapped == 64 - sum(1 for n in nodes if re.search(early, n))
    assert not isinstance(student.body.features[0][0], qat.QuantLayer)
    assert isinstance(student.body.features[5].block[0][0], qat.QuantLayer)
    with pytest.raises(ValueError, match="match no layer"):
        qat.prepare(Tiny(), np.zeros((2, 1, 16, 20), np.float32), 99.99, keep_float=["features\\.99"])
