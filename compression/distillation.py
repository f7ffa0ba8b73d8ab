"""The knowledge-distillation loss, written once for every task's student."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the class distributions softened at ``temperature``, times T^2 (Hinton et
    al.), so that its gradients keep their size whatever T is; batch mean. Both sides as log-probabilities:
    no softmax of the teacher underflows to 0 inside a log."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1), log_target=True,
                    reduction="batchmean") * t * t


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, hard_loss: torch.Tensor,
                      temperature: float, alpha: float) -> torch.Tensor:
    """``alpha`` on the teacher's softened classes, ``1 - alpha`` on the task's own loss against the truth."""
    return alpha * kd_loss(student_logits, teacher_logits, temperature) + (1 - alpha) * hard_loss
