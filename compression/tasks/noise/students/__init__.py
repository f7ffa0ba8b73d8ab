"""Student networks: built to a budget, registered by the recipe's ``student.type``."""

from __future__ import annotations

from typing import Callable

from torch import nn

from compression.tasks.noise.students.cnn import small_cnn
from compression.tasks.noise.students.slim import slim_teacher

# type -> builder(teacher, n_classes, n_mels, recipe_student_section) -> nn.Module returning (logits, embedding)
BUILDERS: dict[str, Callable[..., nn.Module]] = {"slim_teacher": slim_teacher, "cnn": small_cnn}
