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


def _noise_clips(recipe):
    """A distiller over 8 clips of noise whose teacher says nothing (zero logits), and the student's input for
    view 0 of each clip."""
    from agent.features.audio import LogMelParams
    from compression.tasks.noise.distil import Distiller, features, Views

    fe = LogMelParams.from_dict(recipe.student.frontend)
    rng = np.random.default_rng(0)
    waves, labels = (0.1 * rng.standard_normal((8, 16000))).astype(np.float32), np.arange(8) % 10

    class Teacher(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(len(x), 10)

    distiller = Distiller(Teacher(), fe, fe, waves, labels, 10, 16000, recipe.distil, seed=0)
    views = Views(waves, labels, 10, 16000, fe, recipe.distil, seed=0)
    return distiller, features([views(i, 0) for i in range(8)], fe, 16000)


def _cut_and_retrain(retrain: str) -> tuple[dict, dict, torch.nn.Module]:
    """The state of a random slim student before and after a one-step planned cut and one KD epoch
    (BatchNorm statistics allowed to move, so that only ``retrain`` can keep them)."""
    student, recipe = _slim(**{
        "prune.retrain": retrain, "prune.steps": 1, "prune.final_epochs": 1, "distil.freeze_bn": False,
        "distil.batch_size": 4, "prune.plan.blocks": {12: {"keep": 0.5}, 14: {"drop": True}}})
    distiller, x = _noise_clips(recipe)
    calib = x.numpy()
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


def _cut_with_mimic(weight: float):
    """A random slim student cut by a plan (block 14 dropped, block 12 thinned) and given two KD epochs, with
    ``prune.mimic_weight`` = ``weight``; returns the whole student (before the cut), the cut one, the views'
    student inputs and the Mimic the run used (None without one)."""
    import copy

    from compression.tasks.noise import mimic as mimic_module

    student, recipe = _slim(**{
        "prune.mimic_weight": weight, "prune.steps": 1, "prune.final_epochs": 2, "distil.batch_size": 4,
        "distil.views_per_clip": 1, "prune.lr": 0.003, "prune.plan.blocks": {12: {"keep": 0.5}, 14: {"drop": True}}})
    distiller, x = _noise_clips(recipe)
    # BatchNorm statistics of these clips, as a trained student has them: at a fresh layer's defaults the maps
    # shrink ~1e3 per stage and the embedding's input is ~1e-17, where no error means anything
    for m in student.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a plain mean over the calibration passes
    with torch.no_grad():
        student.train()(x)
    student.eval()
    whole = copy.deepcopy(student)
    used = []
    real = mimic_module.Mimic

    class Recorded(real):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            used.append(self)

    mimic_module.Mimic = Recorded
    try:
        prune_stage(student, recipe, _example(recipe.student.frontend, 1.0), x.numpy(), distiller,
                    sum(p.numel() for p in student.parameters()))
    finally:
        mimic_module.Mimic = real
    return whole, student, x, (used[0] if used else None)


def _embedding_input(model, x):
    got = []
    h = model.body.features[-1].register_forward_pre_hook(lambda m, inp: got.append(inp[0]))
    with torch.no_grad():
        model.eval()(x)
    h.remove()
    return got[0]


def test_a_cut_student_can_learn_the_map_the_whole_one_hands_its_embedding_layer():
    """``prune.mimic_weight``: after the cut, KD also matches, position by position, the input of the embedding
    layer of the student as it was before the cut (the residual stream, the same shape with block 14 gone).
    The cut student ends closer to that map than the same cut trained on the logits alone; the reference is
    computed once per view and cached, and it is the student before the cut, untouched by the training."""
    from compression.tasks.noise.mimic import relative_error

    whole, plain, x, none = _cut_with_mimic(0.0)
    assert none is None
    target = _embedding_input(whole, x)
    _, matched, _, mimic = _cut_with_mimic(10.0)
    assert relative_error(_embedding_input(matched, x), target) < 0.5 * relative_error(_embedding_input(plain, x), target)
    assert mimic.reference_calls == 8 and len(mimic.cache) == 8  # 8 clips x 1 view, over two epochs
    assert all(torch.equal(a, b) for a, b in zip(mimic.reference.state_dict().values(), whole.state_dict().values()))


def test_the_mimic_term_is_zero_for_the_reference_itself_and_refuses_a_map_of_another_shape():
    from compression.tasks.noise.mimic import Mimic

    student, _ = _slim()
    x = torch.randn(3, 1, 103, 200, generator=torch.Generator().manual_seed(1))
    mimic = Mimic(student, 2.0)
    student.eval()
    with mimic.watching(student):
        student(x)
        assert mimic.loss([(0, 0), (1, 0), (2, 0)], x).item() == 0.0
        student(x[:, :, :, :100])  # fewer frames: another map than the cached one
        with pytest.raises(ValueError, match=r"prune.mimic_weight: the cut student's map at body.features.16"):
            mimic.loss([(0, 0), (1, 0), (2, 0)], x[:, :, :, :100])
    with pytest.raises(RuntimeError, match="inside Mimic.watching"):
        mimic.loss([(0, 0)], x[:1])


def test_mimicking_needs_the_reconstruct_pruner():
    with pytest.raises(ConfigError, match="mimic_weight .* use it with method reconstruct"):
        load_recipe(SHIPPED_RECIPE, **{"prune.mimic_weight": 1.0, "prune.method": "magnitude"})
