"""Pruning by reconstruction for the slim mn04 student: keep what the data uses, re-fit what follows.

Why not plain magnitude pruning (``prune.py``): on mn04 the L2 norm of a conv's
weights says little about a channel's worth (BatchNorm rescales it); removing the 8
"weakest" of 80 expanded channels in one block cost 3 points on fold 2, and one-shot
30 % cost everything, with KD recovering only to 58 %. Here, as in ThiNet (Luo et
al., ICCV 2017), each layer is pruned by what it contributes on real clips and the
next layer is re-fitted by least squares to reproduce the original network's output:

for every inverted-residual block, in order, on the already-pruned network's inputs:
  1. expanded channels: keep the k with the largest mean |activation| x ||projection
     weights||; remove the rest (torch-pruning removes them from the expand conv, BN,
     depthwise conv, SE and projection together);
  2. SE bottleneck: the same for its hidden units, then re-fit fc2 to the original gate
     logits (the gate sees fewer channel means: fc1's bias absorbs the removed mean);
  3. the projection conv is re-fitted to the original block's pre-BN output, and its
     intercept folded into the BatchNorm's running mean;
then the last conv (the embedding) and the head's hidden layer the same way, re-fitting
the layer after each. Residual streams are never cut. KD fine-tuning follows.
"""

from __future__ import annotations

import copy
import logging
from typing import Callable

import torch
import torch_pruning as tp
from torch import nn

from compression.tasks.noise.mn04 import ConcurrentSEBlock, InvertedResidual

log = logging.getLogger(__name__)
SAMPLES_PER_CLIP = 48  # spatial positions sampled per clip for each block's least squares
RIDGE = 1e-4


def round8(x: float, minimum: int = 8) -> int:
    return max(minimum, int(round(x / 8)) * 8)


def _capture(model: nn.Module, module: nn.Module, x: torch.Tensor, batch: int = 64, output: bool = False,
             positions: int | None = SAMPLES_PER_CLIP, seed: int = 0) -> torch.Tensor:
    """The input (or output) of ``module`` over ``x``, as (samples, channels); maps are sampled at
    ``positions`` seeded spatial positions per clip so that two captures line up."""
    chunks: list[torch.Tensor] = []

    def hook(m, inp, out):
        t = (out if output else inp[0]).detach()
        if t.dim() == 4 and positions is not None:
            b, c, f, w = t.shape
            g = torch.Generator().manual_seed(seed + len(chunks))
            idx = torch.randint(0, f * w, (positions,), generator=g)
            t = t.flatten(2)[:, :, idx].permute(0, 2, 1).reshape(-1, c)
        elif t.dim() == 4:
            t = t.mean((2, 3))
        chunks.append(t)

    h = module.register_forward_hook(hook)
    model.eval()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            model(x[i:i + batch])
    h.remove()
    return torch.cat(chunks).double()


def _lstsq(inputs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W (out, in), b (out) minimising ||inputs W^T + b - target||^2 + ridge ||W||^2."""
    a = torch.cat([inputs, torch.ones(len(inputs), 1, dtype=inputs.dtype)], 1)
    gram = a.T @ a
    # ridge relative to the inputs' own scale (activations differ by orders of magnitude between layers)
    reg = RIDGE * torch.diagonal(gram)[:-1].mean() * torch.eye(a.shape[1], dtype=a.dtype)
    reg[-1, -1] = 0
    sol = torch.linalg.solve(gram + reg, a.T @ target)
    return sol[:-1].T.float(), sol[-1].float()


def _keep(contribution: torch.Tensor, k: int) -> list[int]:
    """Indices to remove: all but the k largest contributions."""
    order = torch.argsort(contribution, descending=True)
    return sorted(order[k:].tolist())


def _prune(model: nn.Module, example: torch.Tensor, layer: nn.Module, remove: list[int], fn) -> None:
    if not remove:
        return
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    group = dg.get_pruning_group(layer, fn, idxs=remove)
    group.prune()


def _prune_refit(student: nn.Module, example: torch.Tensor, producer: nn.Module, consumer: nn.Linear, k: int,
                 target: torch.Tensor, x: torch.Tensor, fn) -> None:
    """Keep the ``k`` outputs of ``producer`` that contribute most to the linear ``consumer`` (mean
    |input| x the norm of its weight column), then re-fit ``consumer`` by least squares to ``target``."""
    a = _capture(student, consumer, x, positions=None)
    contrib = a.abs().mean(0).float() * consumer.weight.detach().norm(dim=0)
    _prune(student, example, producer, _keep(contrib, k), fn)
    w, b = _lstsq(_capture(student, consumer, x, positions=None), target)
    with torch.no_grad():
        consumer.weight.copy_(w)
        consumer.bias.copy_(b)


def prune_block(student: nn.Module, original: nn.Module, block_index: int, keep: float,
                x: torch.Tensor, example: torch.Tensor, se_keep: float | None = None) -> None:
    """Prune and re-fit one inverted-residual block of ``student.body`` (see the module docstring).
    ``se_keep`` 0 removes the block's squeeze-excitation: the projection re-fit (step 3) then
    absorbs the gate's average, and the block loses five small operators and most of its weights."""
    blk = student.body.features[block_index]
    oblk = original.body.features[block_index]
    if not isinstance(blk, InvertedResidual) or len(blk.block) < 3:
        return  # features.1 has no expansion
    has_se = isinstance(blk.block[2], ConcurrentSEBlock)
    if has_se and se_keep == 0:
        blk.block[2] = nn.Identity()
        has_se = False
    proj, oproj = blk.block[-1][0], oblk.block[-1][0]
    expand = blk.block[0][0]
    width = expand.out_channels
    k = min(width, round8(width * keep))

    # 1. expanded channels, ranked by contribution to the projection
    a = _capture(student, proj, x)
    contrib = a.abs().mean(0).float() * proj.weight.detach()[:, :, 0, 0].norm(dim=0)
    removed = _keep(contrib, k)
    if has_se and removed:
        se = blk.block[2].conc_se_layers[0]
        dw_mean = _capture(student, blk.block[1], x, output=True, positions=None).mean(0).float()
        with torch.no_grad():  # fc1 sees fewer channel means: its bias takes their average
            se.fc1.bias += se.fc1.weight[:, removed] @ dw_mean[removed]
    _prune(student, example, expand, removed, tp.prune_conv_out_channels)

    # 2. SE bottleneck, re-fit fc2 to the original gate logits
    if has_se:
        se, ose = blk.block[2].conc_se_layers[0], oblk.block[2].conc_se_layers[0]
        target = _capture(original, ose.fc2, x, positions=None, output=True)  # original gate logits
        kept_channels = [c for c in range(width) if c not in set(removed)]
        ks = min(se.fc1.out_features, round8(se.fc1.out_features * (keep if se_keep is None else se_keep)))
        _prune_refit(student, example, se.fc1, se.fc2, ks, target[:, kept_channels], x, tp.prune_linear_out_channels)

    # 3. projection re-fitted to the original pre-BN block output
    a = _capture(student, proj, x)
    z = _capture(original, oproj, x, output=True)
    w, b = _lstsq(a, z)
    bn = blk.block[-1][1]
    with torch.no_grad():
        proj.weight.copy_(w[:, :, None, None])
        bn.running_mean -= b  # BN((Wa + b) - mu) == BN(Wa - (mu - b))


def prune_head(student: nn.Module, original: nn.Module, keep_embedding: float, keep_hidden: float,
               x: torch.Tensor, example: torch.Tensor) -> None:
    """The last conv's channels (the embedding) and the classifier's hidden layer, each re-fitted."""
    body, obody = student.body, original.body
    last = body.features[-1][0]
    fc_hidden, fc_out = body.classifier[2], body.classifier[5]
    # embedding channels -> re-fit the hidden layer's pre-activation
    hidden = _capture(original, obody.classifier[2], x, positions=None, output=True)
    _prune_refit(student, example, last, fc_hidden, round8(last.out_channels * keep_embedding), hidden, x,
                 tp.prune_conv_out_channels)
    # hidden units -> re-fit the output layer to the original logits
    logits = _capture(original, obody.classifier[5], x, positions=None, output=True)
    _prune_refit(student, example, fc_hidden, fc_out, round8(fc_hidden.out_features * keep_hidden), logits, x,
                 tp.prune_linear_out_channels)


def reconstruct(student: nn.Module, x: torch.Tensor, keep: float, keep_head: float | None = None,
                first_block: int = 2, progress: Callable[[str], None] = log.info) -> nn.Module:
    """Prune ``student`` (a SlimTeacher) in place, keeping ``keep`` of the expanded channels of
    blocks ``first_block``.. and of the SE bottlenecks, and ``keep_head`` of the embedding and hidden
    layer. ``x``: (N, 1, F, T) calibration features from the training clips."""
    original = copy.deepcopy(student).eval()
    example = x[:1]
    for i in range(first_block, len(student.body.features) - 1):
        prune_block(student, original, i, keep, x, example)
        progress(f"block {i}: {student.body.features[i].block[0][0].out_channels} expanded channels")
    prune_head(student, original, keep_head or keep, keep_head or keep, x, example)
    return student


def plan_keep(student: nn.Module, example: torch.Tensor, target_params: int, first_block: int = 2) -> float:
    """The keep fraction whose structure (channels chosen arbitrarily) has at most ``target_params``."""
    def params(keep: float) -> int:
        m = copy.deepcopy(student)
        for i in range(first_block, len(m.body.features) - 1):
            blk = m.body.features[i]
            if not isinstance(blk, InvertedResidual) or len(blk.block) < 3:
                continue
            expand = blk.block[0][0]
            _prune(m, example, expand, list(range(expand.out_channels - round8(expand.out_channels * keep))),
                   tp.prune_conv_out_channels)
            if isinstance(blk.block[2], ConcurrentSEBlock):
                fc1 = blk.block[2].conc_se_layers[0].fc1
                _prune(m, example, fc1, list(range(fc1.out_features - round8(fc1.out_features * keep))),
                       tp.prune_linear_out_channels)
        last, hidden = m.body.features[-1][0], m.body.classifier[2]
        _prune(m, example, last, list(range(last.out_channels - round8(last.out_channels * keep))),
               tp.prune_conv_out_channels)
        _prune(m, example, hidden, list(range(hidden.out_features - round8(hidden.out_features * keep))),
               tp.prune_linear_out_channels)
        return sum(p.numel() for p in m.parameters())

    lo, hi = 0.02, 1.0
    if params(lo) > target_params:
        raise ValueError(f"prune.target_params {target_params} is out of reach (at the smallest widths the "
                         f"student keeps {params(lo)} parameters)")
    for _ in range(10):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if params(mid) <= target_params else (lo, mid)  # keep the largest that fits
    return lo


def widths(student: nn.Module) -> dict:
    """The prunable widths of a SlimTeacher: per block (expanded, SE bottleneck), embedding, hidden."""
    blocks = {}
    for i, blk in enumerate(student.body.features):
        if isinstance(blk, InvertedResidual) and len(blk.block) >= 3:
            se = blk.block[2].conc_se_layers[0].fc1.out_features if isinstance(blk.block[2], ConcurrentSEBlock) else 0
            blocks[i] = (blk.block[0][0].out_channels, se)
    return {"blocks": blocks, "embedding": student.body.features[-1][0].out_channels,
            "hidden": student.body.classifier[2].out_features}


def drop_block(student: nn.Module, block_index: int, fraction: float = 1.0,
               progress: Callable[[str], None] = log.info) -> None:
    """Replace residual block ``block_index`` by its skip path (on the last step of a gradual cut; the blocks
    after it are then pruned, and re-fitted, on the inputs it no longer changes)."""
    blk = student.body.features[block_index]
    if not getattr(blk, "use_residual", False):
        raise ValueError(f"prune.plan.blocks.{block_index}.drop: only a residual block can be dropped (its input "
                         f"and output shapes match); block {block_index} changes the shape")
    if fraction >= 1:
        student.body.features[block_index] = nn.Identity()
        progress(f"block {block_index}: dropped")


def apply_plan(student: nn.Module, x: torch.Tensor, original_widths: dict, plan, fraction: float = 1.0,
               progress: Callable[[str], None] = log.info) -> dict:
    """Prune ``student`` in place towards ``plan`` (a recipe PrunePlan): after this call block i keeps
    ``original width * keep_i ** fraction`` channels, so steps of fraction 1/3, 2/3, 1 shrink it
    geometrically and the last lands on the plan. Returns the widths reached."""
    original = copy.deepcopy(student).eval()
    example = x[:1]
    now = widths(student)
    for i, spec in sorted(plan.blocks.items()):
        if i not in now["blocks"]:
            raise ValueError(f"prune.plan.blocks.{i}: not an expanding inverted-residual block "
                             f"(those are {sorted(now['blocks'])})")
        if spec.drop:
            drop_block(student, i, fraction, progress)
            continue
        (w0, s0), (w, s) = original_widths["blocks"][i], now["blocks"][i]
        se_keep = None
        if s:  # the SE still exists: shrink it, or remove it on the last step when the plan says 0
            se_keep = 0.0 if spec.se_keep == 0 and fraction >= 1 else \
                max(s0 * max(spec.se_keep, 8 / s0) ** fraction, 8) / s
        prune_block(student, original, i, w0 * spec.keep ** fraction / w, x, example, se_keep=se_keep)
        progress(f"block {i}: {student.body.features[i].block[0][0].out_channels} expanded channels")
    e0, h0 = original_widths["embedding"], original_widths["hidden"]
    prune_head(student, original, e0 * plan.embedding ** fraction / now["embedding"],
               h0 * plan.hidden ** fraction / now["hidden"], x, example)
    return widths(student)
