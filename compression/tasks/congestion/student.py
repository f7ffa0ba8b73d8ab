"""The congestion student: a multilayer perceptron on the detector front-end's vector.

Input (B, history_steps + 3): the scaled speeds, oldest first, then sin and cos of the
time of day and the weekend flag (agent.features.detector). Two outputs: the three
states' logits, and the speed ``horizon_steps`` ahead in mph, predicted as a change from
the last reading (a forecast that starts at persistence and learns what differs).
"""

from __future__ import annotations

import torch
from torch import nn

from agent.features.detector import DetectorParams

SPEED_CHANGE_MPH = 10.0  # the speed head's unit: changes of a few tens of mph map to O(1) outputs


class DetectorMLP(nn.Module):
    def __init__(self, params: DetectorParams, hidden: list[int]):
        super().__init__()
        self.last, self.scale = params.history_steps - 1, params.speed_scale
        layers, width = [], params.n_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 4)  # 3 state logits, 1 speed change

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(self.body(x))
        return out[:, :3], x[:, self.last] * self.scale + SPEED_CHANGE_MPH * out[:, 3]

    @torch.no_grad()
    def shift_logits(self, offsets: torch.Tensor) -> None:
        """Add per-state offsets to the logits, inside the model (so the exported graph has them)."""
        self.head.bias[:3] += offsets.to(self.head.bias.dtype)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
