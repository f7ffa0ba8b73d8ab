"""What every task's compression recipe shares, written once.

A task's recipe (compression/tasks/noise/recipe.py for noise, compression/chains/<task>_recipe.py) is a
``RecipeBase`` with its own sections. Sections that several tasks have take the shared fields
from here and set their task's defaults with ``with_defaults``: a field's type, bounds and
description are written once, its default where the task chooses it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, Field, create_model, field_validator
from pydantic.fields import FieldInfo

from agent.schema import StrictModel

M = TypeVar("M", bound=BaseModel)


def with_defaults(base: type[M], **defaults: Any) -> type[M]:
    """``base`` with new defaults for the named fields, each keeping its type, bounds and description.

    A value is the new default; ``Field(default, description=...)`` replaces the description too.
    Used as a base class: ``class DistilSection(with_defaults(DistilBase, epochs=40)): ...``.
    """
    fields: dict[str, Any] = {}
    for name, value in defaults.items():
        info = base.model_fields[name]
        given = value if isinstance(value, FieldInfo) else Field(value)
        annotation = Annotated[info.annotation, Field(description=given.description or info.description),
                               *info.metadata]
        fields[name] = (annotation, given.default)
    return create_model(base.__name__, __base__=base, __module__=base.__module__, **fields)


def _positive_ints(v: list[int]) -> list[int]:
    if not v or any(x < 1 for x in v):
        raise ValueError("must be a non-empty list of positive integers")
    return v


PositiveInts = Annotated[list[int], AfterValidator(_positive_ints)]
"""Layer widths or counts: a non-empty list of positive integers."""


class TrainBase(StrictModel):
    """One training run (AdamW, warm-up then cosine decay); each task sets the defaults."""
    epochs: int = Field(ge=0, description="training epochs")
    lr: float = Field(gt=0, description="peak AdamW learning rate (warm-up + cosine)")
    weight_decay: float = Field(ge=0)
    batch_size: int = Field(ge=1)


class DistilBase(TrainBase):
    """Knowledge distillation of the student from the teacher, before pruning."""
    epochs: int = Field(ge=0, description="knowledge-distillation epochs before pruning")
    temperature: float = Field(2.0, gt=0, description="softmax temperature of the soft targets")
    alpha: float = Field(ge=0, le=1, description="weight of the teacher term; 1 - alpha on the labels")


class BudgetBase(StrictModel):
    """What the shipped student may cost; each task sets the limit and adds its compute measure."""
    max_params: int = Field(ge=1, description="parameters of the shipped student")


class FlavourSection(StrictModel):
    percentile: float | None = Field(None, gt=90, le=100, description="overrides quantise.percentile")
    keep_float: list[str] = Field([], description="regular expressions over the FP32 ONNX node names left in "
                                                  "float (mixed precision): layers too sensitive to INT8; each "
                                                  "must match a node")

    @field_validator("keep_float")
    @classmethod
    def _patterns_compile(cls, v: list[str]) -> list[str]:
        import re

        for pattern in v:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"{pattern!r} is not a regular expression ({e})") from None
        return v


class QuantiseSection(StrictModel):
    enabled: bool = True
    calibrate_method: Literal["minmax", "percentile", "entropy"] = Field(
        "percentile", description="how activation ranges are found from the calibration clips")
    percentile: float = Field(99.999, gt=90, le=100, description="for calibrate_method percentile")
    cpu: FlavourSection = Field(FlavourSection(), description="overrides for the onnxruntime CPU flavour")
    tensorrt: FlavourSection = Field(FlavourSection(), description="overrides for the TensorRT flavour")
    qat_epochs: int = Field(0, ge=0, description="quantisation-aware KD epochs for the TensorRT INT8 model when "
                                                 "post-training INT8 fails the gate (0: FP16 engine instead)")
    qat_lr: float = Field(5e-4, gt=0, description="peak learning rate of the quantisation-aware epochs")

    def flavour(self, name: str) -> tuple[float, list[str]]:
        """(percentile, keep_float) for one flavour, its overrides applied."""
        f = getattr(self, name)
        return (self.percentile if f.percentile is None else f.percentile), list(f.keep_float)


class EngineSection(StrictModel):
    enabled: bool = Field(True, description="build a TensorRT engine when tensorrt is importable")
    fp16: bool = Field(True, description="allow FP16 for layers left in float")
    dla_core: int | None = Field(None, ge=0, description="Jetson DLA core, or None for the GPU")
    workspace_mb: int = Field(1024, ge=16)


class PruneBase(StrictModel):
    """Structured pruning in steps, each followed by KD fine-tuning; each task adds its method and target."""
    enabled: bool = True
    steps: int = Field(3, ge=1, description="prune in this many steps, each followed by KD fine-tuning")
    epochs_per_step: int = Field(5, ge=0, description="KD epochs after each pruning step")
    final_epochs: int | None = Field(None, ge=0, description="KD epochs after the last step (default epochs_per_step)")
    lr: float = Field(5e-4, gt=0, description="peak learning rate of the KD fine-tuning after each step")
    round_to: int = Field(8, ge=1, description="keep channel counts multiples of this (tensor cores want 8)")
    max_layer_ratio: float = Field(0.9, gt=0, lt=1, description="never remove more of one layer than this")


class GateBase(StrictModel):
    """What a classification chain's gate holds the shipped model to (``compression.chain.gate``)."""
    max_drop: float = Field(2.0, ge=0, description="accuracy points the shipped INT8 model may lose against the teacher")
    max_onnx_logit_diff: float = Field(1e-4, gt=0, description="largest |logit| difference allowed between the "
                                                              "PyTorch FP32 model and its ONNX export on real inputs")


class RecipeBase(StrictModel):
    """The top level of every recipe; a task's recipe fixes ``task``, names its artefact and adds its
    own sections (its ``name`` description gives an example of its own). Every task quantises and builds
    its TensorRT engine alike (``compression.chain``)."""
    task: str
    name: str = Field(description="artefact name")
    version: str = Field(description="artefact version (semver)")
    seed: int = 0
    threads: int = Field(2, ge=1, description="torch threads for training")
    quantise: QuantiseSection = QuantiseSection()
    engine: EngineSection = EngineSection()
