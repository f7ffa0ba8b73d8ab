"""The vehicles compression recipe (compression/recipes/vehicles.yaml): data with a schema.

Strict sections like the noise recipe's (unknown keys are errors naming the dotted key);
the top level, training, distillation, budget, quantise and engine sections are every
recipe's (compression/recipe_base.py), as are the prune and gate sections' common fields,
narrowed where images differ (per-image compute budget, magnitude pruning only, an accuracy floor).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from agent.features.image import ImageParams
from agent.schema import StrictModel

from compression.image_augment import ImageAugmentSection
from compression.recipe_base import (BudgetBase, DistilBase, GateBase, PositiveInts, PruneBase, RecipeBase, TrainBase,
                                     with_defaults)


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
    widths: PositiveInts = Field(description="channels per stage (each stage halves the resolution)")
    blocks: PositiveInts = Field(description="residual blocks per stage")
    stem: int = Field(ge=1, description="channels of the first convolution")
    dropout: float = Field(0.0, ge=0, lt=1, description="before the classifier")


class TeacherSection(NetSection, with_defaults(TrainBase, lr=2e-3, weight_decay=0.05, batch_size=64, epochs=Field(
        30, description="supervised epochs on the training split"))):
    checkpoint: str | None = Field(None, description="a trained teacher (.pt) to reuse instead of training one; "
                                                     "it must have been trained on this split's training images")
    frontend: dict[str, Any] | None = Field(None, description="image front-end of the teacher (ImageParams); "
                                                              "default: the student's")
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


class DistilSection(with_defaults(DistilBase, epochs=40, lr=2e-3, weight_decay=0.05, batch_size=64, alpha=0.9)):
    views_per_image: int = Field(20, ge=1, description="distinct seeded views per image; the teacher's logits "
                                                      "are cached per view and reused")


class VehiclesPruneSection(with_defaults(PruneBase, steps=2, epochs_per_step=8, lr=1e-3)):
    method: Literal["magnitude"] = Field("magnitude", description="L2 ranking per layer (torch-pruning)")
    target_params: int = Field(280_000, ge=1, description="prune until the model has at most this many parameters")
    protect: list[str] = Field(["stem", "stages.0"], description=(
        "modules whose output channels are kept (the classifier always is): the first, narrow layers hold "
        "few parameters, and rounding their widths to multiples of 8 would take half of them"))

    @model_validator(mode="before")
    @classmethod
    def _older_manifests(cls, data: Any) -> Any:
        # recipes recorded before the prune section had a base of its own carry the noise section's
        # ``plan: null``; it never meant anything here
        if isinstance(data, dict) and "plan" in data and data["plan"] is None:
            data = {k: v for k, v in data.items() if k != "plan"}
        return data


class BudgetSection(with_defaults(BudgetBase, max_params=300_000)):
    max_macs_per_image: float = Field(60e6, gt=0, description="multiply-accumulates per crop")


class VehiclesGateSection(GateBase):
    max_drop: float = Field(1.5, ge=0, description="accuracy points the shipped model may lose against the teacher")
    min_accuracy: float | None = Field(None, ge=0, le=100, description="accuracy floor of the shipped model, "
                                                                       "in percent of the validation split")


class VehiclesRecipe(RecipeBase):
    task: Literal["vehicles"] = "vehicles"
    name: str = Field(description="artefact name, e.g. vehicles-resnet")
    seed: int = Field(0, description="seeds the split, the views, the weights and the batch order")
    threads: int = Field(1, ge=1, description="torch threads for training")
    data: DataSection = DataSection()
    augment: ImageAugmentSection = ImageAugmentSection()
    teacher: TeacherSection
    student: StudentSection
    distil: DistilSection = DistilSection()
    prune: VehiclesPruneSection = VehiclesPruneSection()
    budget: BudgetSection = BudgetSection()
    gate: VehiclesGateSection = VehiclesGateSection()
