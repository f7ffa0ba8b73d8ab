"""The teacher itself as a student: its pretrained blocks and head on a cheaper front-end, then pruned.

With ~900 training clips a student from scratch is weak (its features must come from
somewhere); the teacher's AudioSet filters are worth keeping. The student front-end
(16 kHz, the teacher's mel spacing up to 7.9 kHz) gives exactly the teacher's lower
bands; the teacher's upper bands (7.9-15 kHz) are empty for 16 kHz audio, so the
student pads them back with the front-end's silence value instead of computing them.
Measured on fold 2 with the fine-tuned teacher and no training: 73.9 % without the
padding, 78.9 % with it (78.4 % on the teacher's own 32 kHz front-end).
Structured pruning (``compression/prune.py``) then removes channels, head included.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from agent.features.audio import LogMelParams

from compression.tasks.noise.mn04 import MN


class PadBands(nn.Module):
    """Append ``rows`` mel bands of constant ``value`` above the input's (B, 1, F, T) -> (B, 1, F + rows, T)."""

    def __init__(self, rows: int, value: float):
        super().__init__()
        self.rows, self.value = rows, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pad(x, (0, 0, 0, self.rows), value=self.value)


class SlimTeacher(nn.Module):
    def __init__(self, body: MN, pad_rows: int, silence: float):
        super().__init__()
        self.pad = PadBands(pad_rows, silence)
        self.body = body

    def pruning_protected(self) -> list[str]:
        """Layers whose output channels pruning keeps: the stem, every block's projection (the
        residual streams, 8 to 64 wide: too narrow to lose channels in eights) and the output."""
        names = ["body.features.0.0", f"body.classifier.{len(self.body.classifier) - 1}"]
        names += [f"body.features.{i}.block.{len(b.block) - 1}.0" for i, b in enumerate(self.body.features)
                  if hasattr(b, "block")]
        return names

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.body(self.pad(x))


class TruncatedTeacher(nn.Module):
    """The teacher's first blocks, a new 1x1-conv embedding and a linear head: the cheapest way to
    drop the wide late blocks (where most of mn04's parameters are) without thinning the early ones."""

    def __init__(self, body: MN, blocks: int, embedding: int, n_classes: int, pad_rows: int, silence: float):
        super().__init__()
        self.pad = PadBands(pad_rows, silence)
        self.features = copy.deepcopy(body.features[:blocks])
        width = [m.out_channels for m in self.features[-1].modules() if isinstance(m, nn.Conv2d)][-1]
        self.embed = nn.Sequential(nn.Conv2d(width, embedding, 1), nn.Hardswish())
        self.head = nn.Linear(embedding, n_classes)

    def pruning_protected(self) -> list[str]:
        return ["features.0.0", "head"] + [f"features.{i}.block.{len(b.block) - 1}.0"
                                           for i, b in enumerate(self.features) if hasattr(b, "block")]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embed(self.features(self.pad(x))).mean(dim=(2, 3))
        return self.head(emb), emb


def silence_value(frontend: dict) -> float:
    """The normalised log-mel of digital silence for this front-end."""
    p = LogMelParams.from_dict(frontend)
    return (math.log(p.log_offset) + p.norm_shift) / p.norm_scale


def slim_teacher(teacher: nn.Module, n_classes: int, n_mels: int, section=None,
                 teacher_n_mels: int = 128) -> nn.Module:
    if not isinstance(teacher, MN):
        raise TypeError(f"slim_teacher needs an mn04 teacher (compression.tasks.noise.mn04.MN), got {type(teacher).__name__}")
    if n_mels > teacher_n_mels:
        raise ValueError(f"student.frontend.n_mels {n_mels} exceeds the teacher's {teacher_n_mels} bands")
    silence = silence_value(section.frontend) if section is not None else (math.log(1e-5) + 4.5) / 5
    if section is not None and section.truncate_after is not None:
        if section.truncate_after >= len(teacher.features):
            raise ValueError(f"student.truncate_after {section.truncate_after}: the teacher has blocks "
                             f"0..{len(teacher.features) - 1}")
        return TruncatedTeacher(teacher, section.truncate_after + 1, section.embedding_channels, n_classes,
                                teacher_n_mels - n_mels, silence)
    body = copy.deepcopy(teacher)
    if body.classifier[-1].out_features != n_classes:
        body.replace_head(n_classes)
    return SlimTeacher(body, teacher_n_mels - n_mels, silence)
