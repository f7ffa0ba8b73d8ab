"""The congestion teacher: a GRU over one detector's last hour, pretrained to forecast speeds.

Input: the detector front-end's vector (B, n_features), the same the student gets.
The history runs through the GRU one reading at a time (the speed and its change from
the reading before, and with a profile the usual speed at that time and the profile's
known flag); the calendar features (sin, cos of the time of day, weekend) and the usual
speeds ahead join after it. Three heads, speeds predicted as changes from the last reading:
- ``forecast``: the speed 1 .. forecast_steps readings ahead (pretraining, all training
  detectors; kept as an auxiliary task while fine-tuning);
- the states' logits and the speed at the horizon (fine-tuning), the student's outputs.

``forward`` returns (logits, speed, forecast): logits first, as every model of the chain.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from agent.features.detector import DetectorParams

from compression.tasks.congestion.student import SPEED_CHANGE_MPH

CHECKPOINT_FORMAT = "roadside-congestion-teacher-1"


class SpeedGRU(nn.Module):
    def __init__(self, params: DetectorParams, hidden: int = 64, layers: int = 1, forecast_steps: int = 6):
        super().__init__()
        self.steps, self.scale = params.history_steps, params.speed_scale
        self.profile = params.uses_profile
        self.inp = nn.Linear(4 if self.profile else 2, hidden)
        self.gru = nn.GRU(hidden, hidden, layers, batch_first=True)
        after = 3 + (params.profile_ahead_steps + 1 if self.profile else 0)
        self.body = nn.Sequential(nn.Linear(hidden + after, hidden), nn.ReLU())
        self.forecast = nn.Linear(hidden, forecast_steps)
        self.head = nn.Linear(hidden, 4)  # 3 state logits, 1 speed change at the horizon

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        H = self.steps
        v = x[:, :H, None]  # (B, H, 1) scaled speeds
        change = torch.cat([torch.zeros_like(v[:, :1]), v[:, 1:] - v[:, :-1]], 1)
        per_step, after = [v, change], [x[:, H:H + 3]]
        if self.profile:  # x[:, H + 3:] = usual speeds (history's times, then ahead), known flag
            usual, known = x[:, H + 3:-1], x[:, -1:]
            per_step += [usual[:, :H, None], known[:, None, :].expand(-1, H, 1)]
            after += [usual[:, H:], known]
        _, h = self.gru(torch.relu(self.inp(torch.cat(per_step, 2))))
        z = self.body(torch.cat([h[-1]] + after, 1))
        last = x[:, self.steps - 1] * self.scale
        out = self.head(z)
        return out[:, :3], last + SPEED_CHANGE_MPH * out[:, 3], last[:, None] + SPEED_CHANGE_MPH * self.forecast(z)

    @torch.no_grad()
    def shift_logits(self, offsets: torch.Tensor) -> None:
        self.head.bias[:3] += offsets.to(self.head.bias.dtype)


def save_checkpoint(model: SpeedGRU, path: Path, config: dict) -> Path:
    """Weights plus what they were trained on (``config``: front-end, sizes, split, days)."""
    torch.save({"format": CHECKPOINT_FORMAT, "state_dict": model.state_dict(), **config}, path)
    return path


def load_checkpoint(path: Path | str) -> tuple[SpeedGRU, dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a congestion teacher checkpoint (format {CHECKPOINT_FORMAT} expected)")
    model = SpeedGRU(DetectorParams.from_dict(ckpt["frontend"]), ckpt["hidden"], ckpt["layers"],
                     ckpt["forecast_steps"])
    model.load_state_dict(ckpt["state_dict"], strict=True)
    return model.eval(), {k: v for k, v in ckpt.items() if k != "state_dict"}
