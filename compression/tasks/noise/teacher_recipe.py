"""The teacher fine-tuning recipe: data with a schema (see compression/recipes/noise_teacher.yaml)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from agent.schema import StrictModel


class OptimizerSection(StrictModel):
    lr: float = Field(1e-3, gt=0, description="peak learning rate of the new head (AdamW)")
    layer_decay: float = Field(0.8, gt=0, le=1, description="lr factor per block going down from the head")
    weight_decay: float = Field(0.05, ge=0, description="AdamW decoupled weight decay")
    warmup_epochs: float = Field(1.0, ge=0, description="linear warm-up, then cosine decay to 0")


class AugmentSection(StrictModel):
    mixup_alpha: float = Field(0.3, ge=0, description="Beta(a, a) mixup on log-mel and labels; 0 = off")
    freq_mask: int = Field(24, ge=0, description="max width of a frequency mask, mel bins")
    time_mask: int = Field(60, ge=0, description="max width of a time mask, frames (10 ms)")
    masks_per_axis: int = Field(2, ge=0, description="how many masks of each kind per clip")
    gain_db: float = Field(6.0, ge=0, description="random gain in +-dB (microphones differ)")
    time_roll: bool = Field(True, description="random circular shift in time (events can start anywhere)")


class HoldoutSection(StrictModel):
    """One of the teachers a student's ``teacher.out_of_fold`` reads: trained without one part of the
    training clips, so that its outputs there are those of a model that never heard them."""
    parts: int = Field(ge=2, description="how many parts the training folds' recordings are dealt into "
                                         "(whole recordings, each class spread evenly over the parts)")
    part: int = Field(ge=0, description="the part left out of training (0 .. parts - 1)")
    seed: int = Field(0, description="seeds the deal; teachers that share it partition the same way")

    @model_validator(mode="after")
    def _part_in_range(self) -> "HoldoutSection":
        if self.part >= self.parts:
            raise ValueError(f"part {self.part} is not one of 0 .. {self.parts - 1}")
        return self


class TeacherRecipe(StrictModel):
    task: Literal["noise"] = Field("noise", description="which task the teacher is for")
    checkpoint: str = Field("audioset-mn04/mn04_as_mAP_432.pt",
                            description="pretrained state_dict, relative to the data directory")
    val_fold: str = Field("fold2", description="held-out fold; every other fold trains")
    seed: int = Field(0, description="seeds torch, numpy and the batch order")
    epochs: int = Field(12, ge=1, description="fine-tuning epochs")
    batch_size: int = Field(32, ge=1, description="clips per step")
    optimizer: OptimizerSection = OptimizerSection()
    head_init: Literal["audioset_mapped", "random"] = Field(
        "audioset_mapped", description="start each new class from the mean of its AudioSet outputs")
    freeze: list[str] = Field(default_factory=list,
                              description="parameter-name prefixes kept frozen, e.g. ['features.0']")
    ema_decay: float = Field(0.98, ge=0, lt=1, description="weight EMA per step; 0 = off (the EMA is kept)")
    augment: AugmentSection = AugmentSection()
    holdout: HoldoutSection | None = Field(None, description="leave one part of the training clips out "
                                           "(their paths go to splits.json `held_out`); none = train on all")
    max_clips: int | None = Field(None, ge=1, description="use only the first N clips of each split (smoke runs)")
