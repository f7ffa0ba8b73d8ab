"""Students built from the fine-tuned teacher (compression/tasks/noise/students/slim.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compression import prune
from compression.tasks.noise.chain import _example, prune_stage
from compression.recipe import load_recipe
from compression.tasks.noise.students import BUILDERS
from compression.tasks.noise.mn04 import MN

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
