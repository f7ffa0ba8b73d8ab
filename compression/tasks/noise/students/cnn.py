"""A small CNN trained from scratch on the student front-end: the baseline a slim teacher must beat."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self, n_classes: int, channels: list[int]):
        super().__init__()
        layers, cin = [], 1
        for c in channels:
            # two 3x3 convs per stage, then halve both axes
            layers += [nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                       nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                       nn.MaxPool2d(2)]
            cin = c
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Dropout(0.2),
                                        nn.Linear(cin, n_classes))
        self.embedding_dim = cin

    def pruning_protected(self) -> list[str]:
        return [f"classifier.{len(self.classifier) - 1}"]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return self.classifier(f), f.mean(dim=(2, 3))


def small_cnn(teacher: nn.Module, n_classes: int, n_mels: int, section=None) -> nn.Module:
    channels = list(section.cnn_channels) if section is not None else [16, 32, 64, 128]
    return SmallCNN(n_classes, channels)
