"""mn04 re-implementation: strict loading and the golden vectors of SPEC.md section 9."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compression.tasks.noise.mn04 import MN, CHECKPOINT_SHA256, load_pretrained, make_divisible
from compression.manifest import sha256_file

GOLDEN_ATOL = {"fmaps": 1e-4, "embedding": 1e-4, "logits": 1e-3}  # SPEC section 9


@pytest.fixture(scope="module")
def model(mn04_dir):
    return load_pretrained(mn04_dir / "mn04_as_mAP_432.pt")


@pytest.mark.parametrize("v, expected", [(16 * 0.4, 8), (24 * 0.4, 16), (184 * 0.4, 72), (672 * 0.4, 272),
                                         (40 * 0.4, 16), (1280 * 0.4, 512)])
def test_make_divisible_matches_spec_examples(v, expected):
    assert make_divisible(v) == expected


def test_architecture_has_spec_parameter_count_without_checkpoint():
    assert sum(p.numel() for p in MN().parameters()) == 983_599


def test_residuals_follow_stride_and_width_rules():
    m = MN()
    with_residual = [i for i in range(1, 16) if m.features[i].use_residual]
    # features.1 has one (8 -> 8, stride 1); features.4 has none (16 -> 16 but stride 2).
    assert with_residual == [1, 3, 5, 6, 8, 9, 10, 12, 14, 15]


def test_checkpoint_is_the_one_the_spec_describes(mn04_dir):
    assert sha256_file(mn04_dir / "mn04_as_mAP_432.pt") == CHECKPOINT_SHA256


def test_every_feature_map_matches_golden(model, mn04_dir):
    g = mn04_dir / "golden"
    h = torch.from_numpy(np.load(g / "logmel.npy"))
    with torch.inference_mode():
        for i, layer in enumerate(model.features):
            h = layer(h)
            ref = np.load(g / "fmaps" / f"features_{i:02d}.npy")
            assert h.shape == ref.shape, f"features.{i}"
            assert np.abs(h.numpy() - ref).max() <= GOLDEN_ATOL["fmaps"], f"features.{i}"


@pytest.mark.parametrize("suffix", ["", "_fmax16000"])
def test_logits_and_embedding_match_golden(model, mn04_dir, suffix):
    g = mn04_dir / "golden"
    with torch.inference_mode():
        logits, emb = model(torch.from_numpy(np.load(g / f"logmel{suffix}.npy")))
    assert np.abs(emb.numpy() - np.load(g / f"embedding384{suffix}.npy")).max() <= GOLDEN_ATOL["embedding"]
    assert np.abs(logits.numpy() - np.load(g / f"logits{suffix}.npy")).max() <= GOLDEN_ATOL["logits"]


def test_waveform_to_logits_through_the_device_front_end(model, mn04_dir):
    """The agent's numpy log-mel feeding the torch model reproduces the original pipeline."""
    from agent.features.audio import TEACHER_LOGMEL, log_mel

    g = mn04_dir / "golden"
    x = log_mel(np.load(g / "wave32k.npy"), TEACHER_LOGMEL)[None, None]
    with torch.inference_mode():
        logits, _ = model(torch.from_numpy(x))
    assert np.abs(logits.numpy() - np.load(g / "logits.npy")).max() <= GOLDEN_ATOL["logits"]
    assert int(logits.argmax()) == 322  # Emergency vehicle, the golden clip's top-1
