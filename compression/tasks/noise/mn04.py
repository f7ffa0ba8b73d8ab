"""EfficientAT mn04: a MobileNetV3-style audio tagger (width 0.4), written from SPEC.md.

Loads ``mn04_as_mAP_432.pt`` with ``strict=True``. Module names and Sequential
indices follow the checkpoint's key map exactly (SPEC section 5), so the
parameter-free layers sit where the numbering needs them.

Input: normalised log-mel (B, 1, 128, T) from ``agent.features.audio.TEACHER_LOGMEL``.
Output: ``(logits (B, n_classes), embedding (B, 384))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

# BatchNorm as in torchvision's ConvNormActivation used by EfficientAT: eps 1e-3
# (PyTorch's default 1e-5 moves the logits by up to 2.4: SPEC section 7).
BN_EPS = 1e-3
BN_MOMENTUM = 0.01
CHECKPOINT_NAME = "mn04_as_mAP_432.pt"
CHECKPOINT_SHA256 = "899a8c6217063f6941793102a2780b3dd788ab11fce468d9cf5f0577c453321c"


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of 8, never losing more than 10 %."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new < 0.9 * v:
        new += divisor
    return new


class ConvBNAct(nn.Sequential):
    """Conv (no bias) -> BN -> optional activation; indices .0/.1/.2 as in the checkpoint."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
                 act: type[nn.Module] | None = nn.ReLU):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """Channel SE with Linear layers, a ReLU inside and a true sigmoid gate (not torchvision's)."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, squeeze)
        self.fc2 = nn.Linear(squeeze, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3))                                   # (B, C)
        g = torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))
        return x * g[:, :, None, None]


class ConcurrentSEBlock(nn.Module):
    """EfficientAT's wrapper: one SE per dimension, max over their outputs (here: one, channel)."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.conc_se_layers = nn.ModuleList([SqueezeExcitation(channels, squeeze)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [layer(x) for layer in self.conc_se_layers]
        return outs[0] if len(outs) == 1 else torch.stack(outs).amax(dim=0)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, exp: int, cout: int, k: int, stride: int, act: type[nn.Module], se: bool):
        super().__init__()
        layers: list[nn.Module] = []
        if exp != cin:  # only features.1 has no expansion
            layers.append(ConvBNAct(cin, exp, 1, act=act))
        layers.append(ConvBNAct(exp, exp, k, stride, groups=exp, act=act))
        if se:
            layers.append(ConcurrentSEBlock(exp, make_divisible(exp // 4, 8)))
        layers.append(ConvBNAct(exp, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        # Residual only when shapes match: features.4 is 16 -> 16 but stride 2, so none there.
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_residual else y


@dataclass(frozen=True)
class BlockSpec:
    cin: int
    exp: int
    cout: int
    k: int
    stride: int
    act: str  # "RE" | "HS"
    se: bool


# MobileNetV3-Large at width 1.0; scaled by width_mult and rounded by make_divisible.
_BASE = [
    (16, 16, 16, 3, 1, "RE", False),
    (16, 64, 24, 3, 2, "RE", False),
    (24, 72, 24, 3, 1, "RE", False),
    (24, 72, 40, 5, 2, "RE", True),
    (40, 120, 40, 5, 1, "RE", True),
    (40, 120, 40, 5, 1, "RE", True),
    (40, 240, 80, 3, 2, "HS", False),
    (80, 200, 80, 3, 1, "HS", False),
    (80, 184, 80, 3, 1, "HS", False),
    (80, 184, 80, 3, 1, "HS", False),
    (80, 480, 112, 3, 1, "HS", True),
    (112, 672, 112, 3, 1, "HS", True),
    (112, 672, 160, 5, 2, "HS", True),
    (160, 960, 160, 5, 1, "HS", True),
    (160, 960, 160, 5, 1, "HS", True),
]


def block_specs(width_mult: float = 0.4) -> list[BlockSpec]:
    d = lambda c: make_divisible(c * width_mult)  # noqa: E731
    return [BlockSpec(d(i), d(e), d(o), k, s, a, se) for i, e, o, k, s, a, se in _BASE]


class MN(nn.Module):
    """mn04 (width 0.4) by default. ``n_classes`` replaces the 527 AudioSet outputs for fine-tuning."""

    def __init__(self, n_classes: int = 527, width_mult: float = 0.4, dropout: float = 0.2):
        super().__init__()
        specs = block_specs(width_mult)
        acts = {"RE": nn.ReLU, "HS": nn.Hardswish}
        layers: list[nn.Module] = [ConvBNAct(1, specs[0].cin, 3, 2, act=nn.Hardswish)]
        for s in specs:
            layers.append(InvertedResidual(s.cin, s.exp, s.cout, s.k, s.stride, acts[s.act], s.se))
        last = 6 * specs[-1].cout  # not rounded again (SPEC section 3)
        layers.append(ConvBNAct(specs[-1].cout, last, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        hidden = make_divisible(1280 * width_mult)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
            nn.Linear(last, hidden), nn.Hardswish(), nn.Dropout(dropout),
            nn.Linear(hidden, n_classes),
        )
        self.embedding_dim = last

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, 1, n_mels, T) normalised log-mel -> (logits, embedding (B, 384))."""
        f = self.features(x)
        emb = f.mean(dim=(2, 3))
        return self.classifier(f), emb

    def replace_head(self, n_classes: int) -> None:
        """A new output layer for a new label set (the hidden layer keeps its AudioSet weights)."""
        old = self.classifier[5]
        self.classifier[5] = nn.Linear(old.in_features, n_classes)


def load_pretrained(checkpoint: Path | str) -> MN:
    """The AudioSet model from a state_dict file, loaded strictly (every key, every shape)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = MN(n_classes=527)
    model.load_state_dict(state, strict=True)
    return model.eval()
