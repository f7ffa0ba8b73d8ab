"""Training on augmented image views: supervised (the teacher) or distilled from a teacher (the student).

One loop for both, AdamW with a linear warm-up and cosine decay per run:
- supervised: cross-entropy against the view's (mixed, label-smoothed) target;
- distilled: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(target), the
  teacher run on the same view (through its own front-end). The teacher's logits are
  cached per (image, view): with ``views_per_image`` distinct views per image, every
  view after the first pass is free, across the distillation and the pruning re-fits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from compression.image_augment import Views
from compression.distillation import distillation_loss
from compression.schedule import optimise, warmup_cosine


@dataclass(frozen=True)
class Schedule:
    epochs: int
    lr: float
    weight_decay: float
    batch_size: int
    warmup_epochs: float = 1.0


class TeacherCache:
    """The teacher's logits per (image, view), computed once."""

    def __init__(self, teacher: nn.Module):
        self.teacher = teacher.eval()
        self.cache: dict[tuple[int, int], torch.Tensor] = {}
        self.calls = 0  # teacher forward passes paid for (one per distinct view)

    def logits(self, keys: list[tuple[int, int]], x: np.ndarray) -> torch.Tensor:
        missing = [k for k, key in enumerate(keys) if key not in self.cache]
        if missing:
            with torch.inference_mode():
                out = self.teacher(torch.from_numpy(x[missing]))
            self.calls += len(missing)
            for k, row in zip(missing, out):
                self.cache[keys[k]] = row.clone()
        return torch.stack([self.cache[key] for key in keys])

    def state_dict(self) -> dict:
        """What a reused stage restores (``compression.chain.lineage``): the logits computed so far."""
        return {"cache": self.cache, "calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        self.cache, self.calls = dict(state["cache"]), state["calls"]


def soft_ce(logits: torch.Tensor, target: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    if smoothing:
        target = target * (1 - smoothing) + smoothing / target.shape[1]
    return torch.sum(-target * torch.log_softmax(logits, 1), 1).mean()


def train(model: nn.Module, views: Views, sched: Schedule, seed: int, desc: str, *,
          teacher: TeacherCache | None = None, temperature: float = 1.0, alpha: float = 0.0,
          label_smoothing: float = 0.0, views_per_image: int | None = None, first_view: int = 0,
          student_input: int = 0, teacher_input: int = 0,
          on_epoch: Callable[[int], dict] | None = None) -> list[dict]:
    """Train ``model`` for ``sched.epochs``; returns per-epoch history (plus what ``on_epoch`` measures).

    Epoch ``e`` draws view ``first_view + e`` of every image (modulo ``views_per_image``
    when given). ``student_input`` / ``teacher_input`` index the front-ends of ``views``.
    """
    if sched.epochs == 0:
        return []
    opt = torch.optim.AdamW(model.parameters(), lr=sched.lr, weight_decay=sched.weight_decay)
    n = len(views)
    per_epoch = math.ceil(n / sched.batch_size)
    total, warmup = sched.epochs * per_epoch, max(1, int(sched.warmup_epochs * per_epoch))
    gen = torch.Generator().manual_seed(seed + first_view)
    history, step = [], 0
    for epoch in range(sched.epochs):
        v = first_view + epoch
        v = v % views_per_image if views_per_image else v
        order = torch.randperm(n, generator=gen).tolist()
        model.train()
        losses = []
        bar = tqdm(range(0, n, sched.batch_size), desc=f"{desc} {epoch + 1}/{sched.epochs}", unit="batch", leave=False)
        for s in bar:
            keys = [(i, v) for i in order[s:s + sched.batch_size]]
            xs, y = views.batch(keys)
            for g in opt.param_groups:
                g["lr"] = sched.lr * warmup_cosine(step, total, warmup)
            logits = model(torch.from_numpy(xs[student_input]))
            loss = soft_ce(logits, torch.from_numpy(y), label_smoothing)
            if teacher is not None:
                loss = distillation_loss(logits, teacher.logits(keys, xs[teacher_input]), loss, temperature, alpha)
            optimise(opt, loss, losses, bar)
            step += 1
        entry = {"run": desc, "epoch": epoch + 1, "train_loss": float(np.mean(losses))}
        if on_epoch is not None:
            entry.update(on_epoch(epoch + 1))
        history.append(entry)
        tqdm.write(f"{desc} epoch {epoch + 1}/{sched.epochs}: " +
                   ", ".join(f"{k} {val:.4f}" for k, val in entry.items() if isinstance(val, float)))
    return history


def predict(model: nn.Module, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Logits of ``model`` (eval mode) for (N, C, H, W) inputs."""
    model.eval()
    with torch.inference_mode():
        return np.concatenate([model(torch.from_numpy(x[i:i + batch])).numpy() for i in range(0, len(x), batch)])
