"""A small ResNet for low-resolution crops: the vehicles teacher (wide) and student (narrow, then pruned).

Plain BasicBlocks (He et al., 2016) export to ONNX as Conv/Relu/Add only, which
onnxruntime's quantiser turns into QLinearConv and TensorRT fuses; torch-pruning follows
the residual adds, so a pruned network is again a dense ResNet.

Shapes for the 64 x 64 default front-end: stem (stride 1) 64 x 64 -> stages of stride 2
-> 32, 16, 8, 4 -> global average pool -> linear.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(cin: int, cout: int, k: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(cin, cout, 3, stride), nn.ReLU(inplace=True), *_conv_bn(cout, cout, 3, 1))
        # a 1x1 projection where the shape changes; identity otherwise
        self.shortcut = nn.Sequential(*_conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    """``widths[i]`` channels and ``blocks[i]`` blocks in stage i; every stage halves the resolution."""

    def __init__(self, n_classes: int, widths: list[int], blocks: list[int], stem: int, dropout: float = 0.0):
        super().__init__()
        if len(widths) != len(blocks) or not widths:
            raise ValueError(f"widths {widths} and blocks {blocks} must be non-empty and of equal length")
        self.stem = nn.Sequential(*_conv_bn(3, stem, 3, 1), nn.ReLU(inplace=True))
        stages, cin = [], stem
        for w, n in zip(widths, blocks):
            stages.append(nn.Sequential(*[BasicBlock(cin if b == 0 else w, w, 2 if b == 0 else 1) for b in range(n)]))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Dropout(dropout),
                                  nn.Linear(cin, n_classes))

    def pruning_protected(self) -> list[str]:
        """Layers whose output channels pruning keeps: the classifier (one logit per label)."""
        return [f"head.{len(self.head) - 1}"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))
