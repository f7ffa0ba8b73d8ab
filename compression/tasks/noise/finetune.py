"""Fine-tune mn04 on UrbanSound8K log-mels: the noise teacher.

Why this recipe (see the report for what it measured):
- a new 10-class output layer *initialised from AudioSet*: each class starts as the
  mean of the AudioSet outputs it maps to (SPEC section 6), so epoch 0 already knows
  sirens and dogs and the head only has to learn the priors and the rest;
- every layer trains, with layer-wise learning-rate decay, so the early filters
  stay close to AudioSet while the top adapts (873 clips cannot retrain a CNN);
- AdamW, linear warm-up then cosine; mixup, SpecAugment-style masks, random gain
  and circular time shift (clips are repeat-padded, so a roll is a valid view);
- an exponential moving average of the weights, which is what gets saved.

Inputs are precomputed log-mels (the front-end is deterministic at evaluation), so
an epoch is only the network.
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from compression.schedule import ema_update, warmup_cosine
from compression.tasks.noise.mn04 import MN
from compression.tasks.noise.teacher_recipe import AugmentSection, TeacherRecipe

# UrbanSound8K class -> AudioSet output indices (SPEC section 6, fixed before any result).
US8K_AUDIOSET_MAP: list[list[int]] = [
    [413, 412],                          # air_conditioner
    [308, 309, 318],                     # car_horn
    [71, 13, 3],                         # children_playing
    [74, 75, 76, 77, 78, 79],            # dog_bark
    [425, 424],                          # drilling
    [352, 343, 348, 349],                # engine_idling
    [427, 428, 429, 431],                # gun_shot
    [420],                               # jackhammer
    [396, 322, 323, 324, 325, 397],      # siren
    [137],                               # street_music
]
SILENCE = (math.log(1e-5) + 4.5) / 5  # normalised log-mel of digital silence


def zero_shot_scores(audioset_logits: torch.Tensor) -> torch.Tensor:
    """Per-class score = max sigmoid over the class's AudioSet outputs (SPEC 6)."""
    p = torch.sigmoid(audioset_logits)
    return torch.stack([p[:, idx].amax(1) for idx in US8K_AUDIOSET_MAP], dim=1)


def new_head(model: MN, n_classes: int, init: str) -> MN:
    """Replace the 527-way output with ``n_classes``; optionally start from the mapped AudioSet rows."""
    old = model.classifier[5]
    model.replace_head(n_classes)
    if init == "audioset_mapped":
        if n_classes != len(US8K_AUDIOSET_MAP):
            raise ValueError(f"head_init audioset_mapped needs {len(US8K_AUDIOSET_MAP)} classes, got {n_classes}")
        with torch.no_grad():
            for c, idx in enumerate(US8K_AUDIOSET_MAP):
                model.classifier[5].weight[c] = old.weight[idx].mean(0)
                model.classifier[5].bias[c] = old.bias[idx].mean()
    return model


def param_groups(model: MN, recipe: TeacherRecipe) -> list[dict]:
    """Head at lr; features.16 at lr*d, ..., the stem at lr*d^17. Frozen prefixes get no group."""
    opt = recipe.optimizer
    frozen = tuple(recipe.freeze)
    groups = []
    blocks = [("classifier", model.classifier)] + [
        (f"features.{i}", model.features[i]) for i in range(len(model.features) - 1, -1, -1)]
    for depth, (name, module) in enumerate(blocks):
        params = [p for n, p in module.named_parameters(prefix=name) if not n.startswith(frozen)]
        for n, p in module.named_parameters(prefix=name):
            p.requires_grad_(not n.startswith(frozen))
        if params:
            lr = opt.lr * opt.layer_decay ** depth
            groups.append({"params": params, "lr": lr, "base_lr": lr})
    return groups


def augment(x: torch.Tensor, y: torch.Tensor, cfg: AugmentSection, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, 1, F, T) normalised log-mel, y (B, C) soft labels -> an augmented view of both."""
    x = x.clone()
    b, _, f, t = x.shape
    if cfg.time_roll:
        x = torch.roll(x, int(torch.randint(0, t, (1,), generator=g)), dims=3)
    if cfg.gain_db:
        # a gain of k dB adds k*ln(10)/10 to ln(power), then /5 by the normalisation
        gain = (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1) * cfg.gain_db * math.log(10) / 10 / 5
        x = x + gain
    fill = x.mean(dim=(1, 2, 3))
    for i in range(b):
        for _ in range(cfg.masks_per_axis):
            if cfg.freq_mask:
                w = int(torch.randint(0, cfg.freq_mask, (1,), generator=g))
                s = int(torch.randint(0, f - w + 1, (1,), generator=g))
                x[i, :, s:s + w, :] = fill[i]
            if cfg.time_mask:
                w = int(torch.randint(0, min(cfg.time_mask, t), (1,), generator=g))
                s = int(torch.randint(0, t - w + 1, (1,), generator=g))
                x[i, :, :, s:s + w] = fill[i]
    if cfg.mixup_alpha > 0:
        beta = torch.distributions.Beta(cfg.mixup_alpha, cfg.mixup_alpha)
        lam = beta.sample((b,))
        lam = torch.maximum(lam, 1 - lam)  # the first clip stays dominant
        j = torch.randperm(b, generator=g)
        x = lam[:, None, None, None] * x + (1 - lam[:, None, None, None]) * x[j]
        y = lam[:, None] * y + (1 - lam[:, None]) * y[j]
    return x, y


@torch.inference_mode()
def predict(model: MN, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Logits on the CPU, computed on whatever device the model is on."""
    model.eval()
    dev = next(model.parameters()).device
    return torch.cat([model(x[i:i + batch].to(dev))[0].cpu() for i in range(0, len(x), batch)])


def train(model: MN, x_train: torch.Tensor, y_train: torch.Tensor, recipe: TeacherRecipe,
          evaluate: Callable[[MN], float], device: str | torch.device = "cpu") -> tuple[MN, list[dict]]:
    """Fine-tune in place on ``device``; return the weights to keep (the EMA when on), on the CPU,
    and the history. Batches and their augmentation are drawn on the CPU (the same seeded numbers
    whatever the device) and moved to the device.

    ``evaluate`` scores a model on the validation fold after every epoch, for the
    curve in the report; the schedule is fixed, so no epoch is picked by it.
    """
    from compression.devices import resolve_device

    dev = resolve_device(device)
    model.to(dev)
    gen = torch.Generator().manual_seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    n_classes = model.classifier[5].out_features
    groups = param_groups(model, recipe)
    opt = torch.optim.AdamW(groups, weight_decay=recipe.optimizer.weight_decay)
    steps_per_epoch = math.ceil(len(x_train) / recipe.batch_size)
    total = recipe.epochs * steps_per_epoch
    warmup = max(1, round(recipe.optimizer.warmup_epochs * steps_per_epoch))
    ema = copy.deepcopy(model) if recipe.ema_decay > 0 else None
    kept = ema if ema is not None else model
    history, step = [], 0
    for epoch in range(recipe.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        losses = []
        bar = tqdm(range(0, len(order), recipe.batch_size), desc=f"epoch {epoch + 1}/{recipe.epochs}",
                   unit="batch", leave=False)
        for i in bar:
            idx = order[i:i + recipe.batch_size]
            y = torch.nn.functional.one_hot(y_train[idx], n_classes).float()
            x, y = augment(x_train[idx], y, recipe.augment, gen)
            scale = warmup_cosine(step, total, warmup)
            for grp in groups:
                grp["lr"] = grp["base_lr"] * scale
            x, y = x.to(dev), y.to(dev)
            loss = torch.sum(-y * torch.log_softmax(model(x)[0], dim=1), dim=1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if ema is not None:
                ema_update(ema, model, recipe.ema_decay)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        acc = evaluate(kept)
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_accuracy": acc})
        tqdm.write(f"epoch {epoch + 1}: train loss {history[-1]['train_loss']:.3f}, val accuracy {acc:.4f}")
    return kept.cpu().eval(), history
