"""The vehicles compression recipe (compression/recipes/vehicles.yaml): data with a schema.

Strict sections like the noise recipe's (unknown keys are errors naming the dotted key);
the prune, quantise, engine and gate sections are the noise recipe's, narrowed where
images differ (per-image compute budget, magnitude pruning only, an accuracy floor).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from agent.features.image import ImageParams
from agent.schema import StrictModel

from ..image_augment import ImageAugmentSection
from ..recipe import EngineSection, GateSection, PruneSection, QuantiseSection


def _frontend(v: dict[str, Any]) -> dict[str, Any]:
    p = ImageParams.from_dict(v)  # raises with the bad parameter named
    if not p.channels_first:
        raise ValueError("channels_first must be true: the networks take (3, H, W)")
    return p.to_dict()


class DataSection(StrictModel):
    split_file: str = Field("compression/recipes/vehicles_split.json",
                            description="the recorded train/validation split, relative to the repository or "
                                        "absolute; made (seeded, stratified) when missing, reused when present")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="share of each class held out for validation")
    calibration_images: int = Field(256, ge=1, description="training images (seeded draw) that calibrate INT8")
    max_train_per_class: int | None = Field(None, ge=1, description="smoke runs: first N training images per class")
    max_val_per_class: int | None = Field(None, ge=1, description="smoke runs: first N validation images per class")


class NetSection(StrictModel):
    widths: list[int] = Field(description="channels per stage (each stage halves the resolution)")
    blocks: list[int] = Field(description="residual blocks per stage")
    stem: int = Field(ge=1, description="channels of the first convolution")
    dropout: float = Field(0.0, ge=0, lt=1, description="before the classifier")

    @field_validator("widths", "blocks")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or any(x < 1 for x in v):
            raise ValueError("must be a non-empty list of positive integers")
        return v


class TeacherSection(NetSection):
    checkpoint: str | None = Field(None, description="a trained teacher (.pt) to reuse instead of training one; "
                                                     "it must have been trained on this split's training images")
    frontend: dict[str, Any] | None = Field(None, description="image front-end of the teacher (ImageParams); "
                                                              "default: the student's")
    epochs: int = Field(30, ge=0, description="supervised epochs on the training split")
    lr: float = Field(2e-3, gt=0, description="peak AdamW learning rate (warm-up + cosine)")
    weight_decay: float = Field(0.05, ge=0)
    batch_size: int = Field(64, ge=1)
    label_smoothing: float = Field(0.1, ge=0, lt=1)

    @field_validator("frontend")
    @classmethod
    def _valid_frontend(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if v is None else _frontend(v)


class StudentSection(NetSection):
    frontend: dict[str, Any] = Field(default_factory=lambda: ImageParams().to_dict(),
                                     description="image front-end of the shipped model (ImageParams): the contract")

    @field_validator("frontend")
    @classmethod
    def _valid_frontend(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _frontend(v)


class DistilSection(StrictModel):
    epochs: int = Field(40, ge=0, description="knowledge-distillation epochs before pruning")
    lr: float = Field(2e-3, gt=0, description="peak AdamW learning rate (warm-up + cosine)")
    weight_decay: float = Field(0.05, ge=0)
    batch_size: int = Field(64, ge=1)
    temperature: float = Field(2.0, gt=0, description="softmax temperature of the soft targets")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the teacher term; 1 - alpha on the labels")
    views_per_image: int = Field(20, ge=1, description="distinct seeded views per image; the teacher's logits "
                                                      "are cached per view and reused")


class VehiclesPruneSection(PruneSection):
    method: Literal["magnitude"] = Field("magnitude", description="L2 ranking per layer (torch-pruning)")
    target_params: int = Field(280_000, ge=1, description="prune until the model has at most this many parameters")
    steps: int = Field(2, ge=1, description="prune in this many steps, each followed by KD fine-tuning")
    epochs_per_step: int = Field(8, ge=0, description="KD epochs after each pruning step")
    lr: float = Field(1e-3, gt=0, description="peak learning rate of the KD fine-tuning after each step")
    protect: list[str] = Field(["stem", "stages.0"], description=(
        "modules whose output channels are kept (the classifier always is): the first, narrow layers hold "
        "few parameters, and rounding their widths to multiples of 8 would take half of them"))


class BudgetSection(StrictModel):
    max_params: int = Field(300_000, ge=1, description="parameters of the shipped student")
    max_macs_per_image: float = Field(60e6, gt=0, description="multiply-accumulates per crop")


class VehiclesGateSection(GateSection):
    max_drop: float = Field(1.5, ge=0, description="accuracy points the shipped model may lose against the teacher")
    min_accuracy: float | None = Field(None, ge=0, le=100, description="accuracy floor of the shipped model, "
                                                                       "in percent of the validation split")


class VehiclesRecipe(StrictModel):
    task: Literal["vehicles"] = "vehicles"
    name: str = Field(description="artefact name, e.g. vehicles-resnet")
    version: str = Field(description="artefact version (semver)")
    seed: int = Field(0, description="seeds the split, the views, the weights and the batch order")
    threads: int = Field(1, ge=1, description="torch threads for training")
    data: DataSection = DataSection()
    augment: ImageAugmentSection = ImageAugmentSection()
    teacher: TeacherSection
    student: StudentSection
    distil: DistilSection = DistilSection()
    prune: VehiclesPruneSection = VehiclesPruneSection()
    quantise: QuantiseSection = QuantiseSection()
    engine: EngineSection = EngineSection()
    budget: BudgetSection = BudgetSection()
    gate: VehiclesGateSection = VehiclesGateSection()
