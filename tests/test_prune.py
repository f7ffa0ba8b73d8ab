"""Structured pruning to a parameter target (compression/prune.py), on the small CNN student."""

from __future__ import annotations

import pytest
import torch

from compression import prune
from compression.tasks.noise.students.cnn import SmallCNN

EXAMPLE = torch.zeros(1, 1, 64, 398)


def _cnn():
    torch.manual_seed(0)
    return SmallCNN(10, [16, 32])  # 5,706 parameters


def test_the_target_is_met_with_widths_in_multiples_of_eight():
    model = _cnn()
    step = prune.prune_step(model, EXAMPLE, 3000, 8, 0.9, model.pruning_protected())
    assert step["params_before"] == 5706 and step["params"] <= 3000
    assert prune.count(model, EXAMPLE)[1] == step["params"]
    assert all(w % 8 == 0 for w in prune.widths(model).values())
    assert model.classifier[-1].out_features == 10  # the protected head keeps every class


def test_a_ratio_that_rounding_turns_into_no_pruning_does_not_hide_a_reachable_target():
    """torch-pruning leaves a 16-channel layer whole when 0.9 would round it below 8 channels,
    so the largest ratio prunes less than a middle one; the search still finds the middle one."""
    widest = _cnn()
    widest = prune.prune_once(widest, EXAMPLE, 0.9, 8, 0.9, prune.protected_layers(widest, widest.pruning_protected()))
    assert prune.count(widest, EXAMPLE)[1] == 5706
    model = _cnn()
    assert prune.ratio_for(model, EXAMPLE, 2000, 8, 0.9, model.pruning_protected()) < 0.9


def test_an_unreachable_target_is_refused_with_the_fewest_parameters_possible():
    model = _cnn()
    with pytest.raises(ValueError, match=r"target_params 1000 is out of reach: the fewest parameters .* is 1698"):
        prune.ratio_for(model, EXAMPLE, 1000, 8, 0.9, model.pruning_protected())


def test_geometric_steps_end_on_the_target():
    assert prune.step_targets(100_000, 12_500, 3) == [50_000, 25_000, 12_500]
    assert prune.step_targets(10_000, 20_000, 3) == [20_000]
