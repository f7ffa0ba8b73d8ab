"""Students built from the fine-tuned teacher (compression/tasks/noise/students/slim.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from agent.schema import ConfigError
from compression import prune
from compression.tasks.noise.chain import _example, prune_stage
from compression.recipe import load_recipe
from compression.tasks.noise.students import BUILDERS
from compression.tasks.noise import reconstruct
from compression.tasks.noise.mn04 import MN, InvertedResidual
from compression.tasks.noise.recipe import PrunePlan

REPO = Path(__file__).resolve().parents[1]
SHIPPED_RECIPE = REPO / "compression" / "recipes" / "noise.yaml"


def _truncated(after: int, embedding: int = 160):
    recipe = load_recipe(SHIPPED_RECIPE, **{"student.truncate_after": after, "student.embedding_channels": embedding})
    torch.manual_seed(0)
    teacher = MN(n_classes=10).eval()
    return BUILDERS["slim_teacher"](teacher, 10, 103, recipe.student), teacher, recipe


def test_a_truncated_teacher_keeps_the_first_blocks_and_gets_a_new_head():
    student, teacher, recipe = _truncated(11)
    # blocks 0..11 are the teacher's own weights, copied
    for mine, theirs in zip(student.features.parameters(), teacher.features[:12].parameters()):
        assert torch.equal(mine, theirs)
    assert len(student.features) == 12 and student.head.out_features == 10
    macs, params = prune.count(student, _example(recipe.student.frontend, 4.0))
    assert params == 83_738  # blocks 0-11: 74,288; 48 -> 160 embedding: 7,840; 160 -> 10 head: 1,610
    logits, emb = student(_example(recipe.student.frontend, 4.0))
    assert logits.shape == (1, 10) and emb.shape == (1, 160)


def test_truncating_past_the_last_block_is_refused():
    with pytest.raises(ValueError, match="truncate_after 17: the teacher has blocks 0..16"):
        _truncated(17)


def test_the_least_squares_pruner_refuses_a_student_it_cannot_re_fit():
    student, _, recipe = _truncated(11)
    recipe = recipe.model_copy(update={"prune": recipe.prune.model_copy(update={"method": "reconstruct"})})
    with pytest.raises(ValueError, match="TruncatedTeacher: use prune.method magnitude"):
        prune_stage(student, recipe, _example(recipe.student.frontend, 4.0), None, None, 83_738)


def _slim(**overrides):
    recipe = load_recipe(REPO / "compression" / "recipes" / "noise_170k.yaml", **overrides)
    torch.manual_seed(0)
    return BUILDERS["slim_teacher"](MN(n_classes=10).eval(), 10, 103, recipe.student), recipe


def _plan(blocks: dict) -> PrunePlan:
    return PrunePlan(blocks=blocks)


def test_a_plan_can_drop_a_residual_block_whole_on_the_last_step_of_a_cut():
    """``prune.plan.blocks.N.drop``: depth instead of width. The block becomes its skip path, every
    parameter it had is gone, and the network still maps a clip to logits; a gradual cut drops it on its
    last step only, so the earlier steps train with it."""
    student, recipe = _slim()
    x = torch.randn(16, 1, 103, 200, generator=torch.Generator().manual_seed(0))
    before = sum(p.numel() for p in student.parameters())
    block = sum(p.numel() for p in student.body.features[15].parameters())
    widths = reconstruct.widths(student)
    reconstruct.apply_plan(student, x, widths, _plan({15: {"drop": True}}), fraction=0.5)
    assert isinstance(student.body.features[15], InvertedResidual)
    reconstruct.apply_plan(student, x, widths, _plan({15: {"drop": True}}), fraction=1.0)
    assert isinstance(student.body.features[15], torch.nn.Identity)
    assert sum(p.numel() for p in student.parameters()) == before - block
    assert 15 not in reconstruct.widths(student)["blocks"]
    logits, _ = student(_example(recipe.student.frontend, 4.0))
    assert logits.shape == (1, 10) and torch.isfinite(logits).all()


def test_only_a_residual_block_can_be_dropped_and_a_drop_takes_no_keep_fractions():
    student, _ = _slim()
    x = torch.randn(4, 1, 103, 200)
    with pytest.raises(ValueError, match=r"prune.plan.blocks.13.drop: only a residual block"):
        reconstruct.apply_plan(student, x, reconstruct.widths(student), _plan({13: {"drop": True}}))
    with pytest.raises(ValidationError, match="drop: true removes the whole block"):
        _plan({14: {"drop": True, "keep": 0.5}})


def _cut_and_retrain(retrain: str) -> tuple[dict, dict, torch.nn.Module]:
    """The state of a random slim student before and after a one-step planned cut and one KD epoch
    (BatchNorm statistics allowed to move, so that only ``retrain`` can keep them)."""
    from agent.features.audio import LogMelParams
    from compression.tasks.noise.distil import Distiller, features, Views

    student, recipe = _slim(**{
        "prune.retrain": retrain, "prune.steps": 1, "prune.final_epochs": 1, "distil.freeze_bn": False,
        "distil.batch_size": 4, "prune.plan.blocks": {12: {"keep": 0.5}, 14: {"drop": True}}})
    fe = LogMelParams.from_dict(recipe.student.frontend)
    rng = np.random.default_rng(0)
    waves, labels = (0.1 * rng.standard_normal((8, 16000))).astype(np.float32), np.arange(8) % 10

    class Teacher(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(len(x), 10)

    distiller = Distiller(Teacher(), fe, fe, waves, labels, 10, 16000, recipe.distil, seed=0)
    views = Views(waves, labels, 10, 16000, fe, recipe.distil, seed=0)
    calib = features([views(i, 0) for i in range(8)], fe, 16000).numpy()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    prune_stage(student, recipe, _example(recipe.student.frontend, 1.0), calib, distiller,
                sum(p.numel() for p in student.parameters()))
    return before, student.state_dict(), student


def test_retraining_from_the_cut_leaves_the_blocks_before_it_as_they_were():
    """``prune.retrain: from_cut``: after a cut that starts at block 12, KD trains blocks 12 on and the head;
    blocks 0-11 keep their weights and BatchNorm statistics exactly, and are trainable again afterwards.
    With ``all`` (the default) the same cut moves them."""
    before, after, student = _cut_and_retrain("from_cut")
    early = [k for k in before if k.startswith(tuple(f"body.features.{i}." for i in range(12)))]
    assert early and all(torch.equal(before[k], after[k]) for k in early)
    assert not torch.equal(before["body.features.13.block.1.0.weight"], after["body.features.13.block.1.0.weight"])
    assert all(p.requires_grad for p in student.parameters())

    before, after, _ = _cut_and_retrain("all")
    assert not all(torch.equal(before[k], after[k]) for k in early)
    assert not torch.equal(before["body.features.3.block.1.1.running_mean"],
                           after["body.features.3.block.1.1.running_mean"])


def test_retraining_from_the_cut_needs_a_plan_to_know_where_the_cut_starts():
    with pytest.raises(ConfigError, match="prune: .*retrain: from_cut trains from the first block the plan changes"):
        load_recipe(SHIPPED_RECIPE, **{"prune.retrain": "from_cut"})
