"""Training for the congestion chain: one loop, three objectives (pretrain, fine-tune, distil).

Losses are in comparable units: cross-entropy of the states, and squared speed errors in
units of 5 mph (an error of 5 mph costs 1), weighted by ``loss.speed_weight``.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from compression.distillation import distillation_loss
from compression.schedule import optimise, warmup_cosine
from compression.tasks.congestion.evaluate import Windows
from compression.tasks.congestion.metrics import macro_f1_of
from compression.tasks.congestion.recipe import DistilSection, TrainSection

SPEED_UNIT_MPH = 5.0


class Tensors:
    """The training windows as tensors, with the multi-step targets of pretraining.

    ``profile``: the columns of the usual speeds (``profile_columns``); each batch shows a
    seeded ``profile_dropout`` share of its windows with them zeroed, as a device sees its
    detector before it has a day of history, so the model learns both cases.
    """

    def __init__(self, w: Windows, future: np.ndarray, profile: slice | None = None, profile_dropout: float = 0.0,
                 seed: int = 0):
        self.x = torch.from_numpy(w.X)
        self.y_state = torch.from_numpy(w.y_state)
        self.y_speed = torch.from_numpy(w.y_speed)
        self.future = torch.from_numpy(future)  # (N, K) mph, NaN where unknown or in evaluation time
        self.n = len(w)
        self.profile = profile if profile is not None and profile.start < profile.stop else None
        self.profile_dropout = profile_dropout if self.profile is not None else 0.0
        self._gen = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict:
        """Where the profile-dropout draws stand: a reused teacher (``compression.chain.lineage``) restores
        it, so the student sees the draws it would after training the teacher."""
        return {"generator": self._gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self._gen.set_state(state["generator"])

    def inputs(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's vectors and which of them had their profile dropped."""
        x = self.x[idx]
        dropped = torch.zeros(len(idx), dtype=torch.bool)
        if self.profile_dropout > 0:
            dropped = torch.rand(len(idx), generator=self._gen) < self.profile_dropout
            x = x.clone()
            x[dropped, self.profile] = 0.0
        return x, dropped


def future_speeds(table, w: Windows, steps: int, eval_start: int) -> np.ndarray:
    """Speeds 1 .. ``steps`` readings after each window's last one; NaN when missing or not in training time."""
    rows = w.t[:, None] + np.arange(1, steps + 1)[None, :]
    out = table.speeds[np.minimum(rows, table.speeds.shape[0] - 1), w.det[:, None]].astype(np.float32)
    out[(rows >= eval_start) | ~(out > 0)] = np.nan
    return out


def speed_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error in units of 5 mph, over the known targets only."""
    known = torch.isfinite(target)
    if not known.any():
        return pred.sum() * 0.0
    return F.mse_loss(pred[known] / SPEED_UNIT_MPH, target[known] / SPEED_UNIT_MPH)


def pretrain_loss(model, d: Tensors, idx: torch.Tensor, speed_weight: float) -> torch.Tensor:
    _, _, forecast = model(d.inputs(idx)[0])
    return speed_loss(forecast, d.future[idx])


def finetune_loss(model, d: Tensors, idx: torch.Tensor, speed_weight: float) -> torch.Tensor:
    logits, speed, forecast = model(d.inputs(idx)[0])
    return (F.cross_entropy(logits, d.y_state[idx])
            + speed_weight * (speed_loss(speed, d.y_speed[idx]) + speed_loss(forecast, d.future[idx])))


def distil_loss(cfg: DistilSection, soft: tuple[torch.Tensor, torch.Tensor],
                soft_without_profile: tuple[torch.Tensor, torch.Tensor] | None = None):
    """alpha on the teacher's states (KL at temperature T, times T^2) and speed; 1 - alpha on the truth.

    ``soft``: the teacher's (logits, speed) on every training window, cached; for a window
    shown without its profile, the teacher's outputs without it (``soft_without_profile``).
    """
    T, a = cfg.temperature, cfg.alpha

    def loss(model, d: Tensors, idx: torch.Tensor, speed_weight: float) -> torch.Tensor:
        x, dropped = d.inputs(idx)
        logits, speed = model(x)
        soft_logits, soft_speed = soft[0][idx], soft[1][idx]
        if soft_without_profile is not None and dropped.any():
            soft_logits = torch.where(dropped[:, None], soft_without_profile[0][idx], soft_logits)
            soft_speed = torch.where(dropped, soft_without_profile[1][idx], soft_speed)
        states = distillation_loss(logits, soft_logits, F.cross_entropy(logits, d.y_state[idx]), T, a)
        speeds = a * speed_loss(speed, soft_speed) + (1 - a) * speed_loss(speed, d.y_speed[idx])
        return states + speed_weight * speeds

    return loss


def fit(model: nn.Module, loss_fn: Callable, d: Tensors, cfg: TrainSection, speed_weight: float, seed: int,
        stage: str) -> list[dict]:
    """AdamW, linear warm-up over the first 5 % of steps then cosine to 0; a seeded draw of
    ``cfg.windows_per_epoch`` windows per epoch. Returns the mean loss per epoch."""
    per_epoch = min(cfg.windows_per_epoch or d.n, d.n)
    steps_per_epoch = math.ceil(per_epoch / cfg.batch_size)
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = max(1, total // 20)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, warm))
    rng = np.random.default_rng((seed, sum(map(ord, stage))))
    history = []
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.from_numpy(rng.permutation(d.n)[:per_epoch])
        losses = []
        for i in tqdm(range(0, per_epoch, cfg.batch_size), desc=f"{stage} {epoch + 1}/{cfg.epochs}", leave=False):
            loss = loss_fn(model, d, order[i:i + cfg.batch_size], speed_weight)
            optimise(opt, loss, losses)
            sched.step()
        history.append({"run": stage, "epoch": epoch + 1, "train_loss": float(np.mean(losses))})
    model.eval()
    return history


def torch_predict(model: nn.Module, batch: int = 8192):
    """A model of the chain as a Predict: (B, F) float32 -> (logits, speed in mph)."""
    def run(x: np.ndarray):
        with torch.inference_mode():
            out = model.eval()(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return out[0].numpy(), out[1].numpy()

    return run


def tune_offsets(logits: np.ndarray, y: np.ndarray, span: float = 2.0, step: float = 0.1) -> tuple[np.ndarray, float]:
    """Offsets added to the slowed and congested logits (free stays 0) that maximise macro-F1
    on (training) windows; a grid search. Returns (offsets (3,), macro-F1 with them)."""
    grid = np.round(np.arange(-span, span + step / 2, step), 6)
    best, best_f1 = np.zeros(3, np.float32), -1.0
    for a in grid:
        for b in grid:
            off = np.array([0.0, a, b], np.float32)
            f1 = float(macro_f1_of(np.bincount(y * 3 + (logits + off).argmax(1), minlength=9).reshape(3, 3)))
            # ties go to the smallest shift: no change unless it helps
            if f1 > best_f1 + 1e-9 or (abs(f1 - best_f1) <= 1e-9 and np.abs(off).sum() < np.abs(best).sum()):
                best, best_f1 = off, f1
    return best, best_f1
