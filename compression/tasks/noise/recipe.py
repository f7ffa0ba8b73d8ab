"""The compression recipe: which stages run, on what, to which budget and gate (data with a schema).

Every section is a strict model (unknown keys are errors). ``load_recipe`` reports
problems with the YAML line and the dotted key, like device configs. What every task's
recipe shares (top level, training, distillation, budget, quantise, engine) is in recipe_base.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from agent.features.audio import LogMelParams
from agent.schema import StrictModel

from compression.recipe_base import BudgetBase, DistilBase, GateBase, PruneBase, RecipeBase, with_defaults
from compression.tasks.noise.teacher_recipe import AugmentSection


class TeacherSection(StrictModel):
    checkpoint: str | None = Field(None, description="fine-tuned teacher (.pt written by `roadside teacher "
                                                     "train`), relative to the repository or absolute")
    huggingface: str | None = Field(None, description="or: a Hugging Face audio-classification model folder "
                                                      "(save_pretrained; AST-style log-mel extractor), read "
                                                      "locally; needs the [hf] extra")
    out_of_fold: list[str] = Field(default_factory=list, description="teachers (`roadside teacher train "
                                   "--holdout K/N`) whose outputs the student learns instead: each training "
                                   "clip from the mean of those that never trained on it (their splits.json "
                                   "says which), so its soft targets are what a teacher says of a clip it has "
                                   "not heard; the teacher above stays the reference the gate measures against")

    @model_validator(mode="after")
    def _one_teacher(self) -> "TeacherSection":
        if (self.checkpoint is None) == (self.huggingface is None):
            raise ValueError("give exactly one of checkpoint or huggingface")
        if self.out_of_fold and self.huggingface is not None:
            raise ValueError("out_of_fold teachers share the reference teacher's front-end: give them beside a "
                             "checkpoint, not a Hugging Face teacher")
        return self


class DataSection(StrictModel):
    val_fold: str = Field("fold2", description="held-out fold that every stage is scored on")
    calibration_clips: int = Field(128, ge=1, description="clips from the training folds used to calibrate INT8")
    max_clips: int | None = Field(None, ge=1, description="first N clips per split only (smoke runs)")


class StudentSection(StrictModel):
    type: Literal["slim_teacher", "cnn"] = Field(
        "slim_teacher", description="slim_teacher: the teacher's pretrained blocks on a cheaper front-end "
                                    "with a linear head; cnn: a small CNN trained from scratch")
    frontend: dict[str, Any] = Field(description="log-mel parameters the student expects (LogMelParams)")
    window_seconds: float = Field(4.0, gt=0, description="audio per inference")
    cnn_channels: list[int] = Field([16, 32, 64, 128], description="cnn only: channels per stage")
    truncate_after: int | None = Field(None, ge=0, description="slim_teacher only: keep the teacher's blocks "
                                                               "0..N and put a new embedding and head on them")
    embedding_channels: int = Field(160, ge=8, description="with truncate_after: width of the new 1x1-conv "
                                                           "embedding")

    @field_validator("frontend")
    @classmethod
    def _valid_frontend(cls, v: dict[str, Any]) -> dict[str, Any]:
        return LogMelParams.from_dict(v).to_dict()  # raises with the bad field named


class BudgetSection(with_defaults(BudgetBase, max_params=128_000)):
    max_macs_per_second: float = Field(30e6, gt=0, description="multiply-accumulates per second of audio")


class ViewAugmentSection(AugmentSection):
    """The teacher's augmentations, plus what only a waveform-domain view can do."""
    speed: float = Field(0.0, ge=0, le=0.3, description="speed perturbation: each view is resampled by a factor "
                         "drawn in [1 - speed, 1 + speed] (pitch and tempo move together, as a closer or "
                         "differently tuned engine, siren or drill would), then tiled back to the clip's length; "
                         "0 = off")


class DistilSection(with_defaults(DistilBase, epochs=3, lr=5e-4, weight_decay=0.02, batch_size=32, alpha=0.7)):
    freeze_bn: bool = Field(True, description="keep BatchNorm statistics fixed while training: the pruning "
                                              "re-fits are calibrated against them, and ~900 clips are too few "
                                              "to re-estimate them")
    views_per_clip: int = Field(10, ge=1, description="distinct seeded augmented views per clip; the "
                                                     "teacher's outputs are cached per view and reused")
    augment: ViewAugmentSection = ViewAugmentSection()
    embedding_weight: float = Field(0.0, ge=0, description="weight of matching the teacher's pooled embedding "
                                    "(1 - cosine, through a linear map trained alongside and then dropped) on "
                                    "top of the logits: 384 numbers per view instead of 10, for a pruned "
                                    "student re-learning its late layers from ~1,000 clips; 0 = logits only")
    ema_decay: float = Field(0.0, ge=0, lt=1, description="keep an exponential moving average of the weights "
                             "(per step) and end each run (the distillation, each prune step) on it, as the "
                             "teacher's fine-tuning does; 0 = off (the last step's weights)")


class BlockKeep(StrictModel):
    keep: float = Field(1.0, gt=0, le=1, description="fraction of the block's expanded channels kept (rounded to 8)")
    se_keep: float = Field(1.0, ge=0, le=1, description="fraction of its squeeze-excitation bottleneck kept; "
                                                        "0 removes the SE (the projection re-fit absorbs its mean gate)")
    drop: bool = Field(False, description="remove the whole block (residual blocks only: its skip path carries "
                                          "the input on), spending its parameters on the blocks around it; the "
                                          "layers after it are re-fitted as usual")

    @model_validator(mode="after")
    def _drop_alone(self) -> "BlockKeep":
        if self.drop and (self.keep != 1.0 or self.se_keep != 1.0):
            raise ValueError("drop: true removes the whole block; keep and se_keep say nothing then, leave them out")
        return self


class PrunePlan(StrictModel):
    """Where the parameters go: mn04's blocks differ 100x in size, so a uniform fraction either
    guts the cheap early blocks (which carry the accuracy) or leaves the wide late ones too big."""
    blocks: dict[int, BlockKeep] = Field(description="by block index (body.features.N); unlisted blocks keep "
                                                     "every channel")
    embedding: float = Field(1.0, gt=0, le=1, description="fraction of the last conv's channels kept")
    hidden: float = Field(1.0, gt=0, le=1, description="fraction of the classifier's hidden units kept")


class PruneSection(PruneBase):
    method: Literal["reconstruct", "magnitude"] = Field(
        "reconstruct", description="reconstruct: keep channels by their contribution on calibration clips and "
                                   "re-fit the next layer by least squares (slim_teacher only); magnitude: L2 "
                                   "ranking per layer (any student)")
    target_params: int = Field(120_000, ge=1, description="prune until the model has at most this many parameters "
                                                          "(uniform fractions; not used with a plan)")
    plan: PrunePlan | None = Field(None, description="reconstruct only: per-block fractions, reached in `steps` "
                                                     "geometric steps; the budget gate checks the result")
    retrain: Literal["all", "from_cut"] = Field(
        "all", description="what the KD after each cut trains: all = the whole student; from_cut = only the "
                           "blocks from the first one the plan changes on, and the head (the blocks before keep "
                           "the distilled student's weights, so ~1,000 clips re-teach what the cut changed "
                           "without moving the pretrained features under it); needs a plan")
    mimic_weight: float = Field(0.0, ge=0, description="weight of matching, position by position, the map the "
                                "whole distilled student (before the cut) hands its embedding layer, on top of "
                                "the teacher's logits, in the KD after each cut (relative squared error: 1 = a "
                                "map of zeros): the cut blocks learn what the ones they replace computed "
                                "(compression/tasks/noise/mimic.py); method reconstruct only; 0 = off")

    @model_validator(mode="after")
    def _cut_options_need_reconstruct(self) -> "PruneSection":
        if self.retrain == "from_cut" and (self.plan is None or self.method != "reconstruct"):
            raise ValueError("retrain: from_cut trains from the first block the plan changes: give a plan "
                             "(method reconstruct)")
        if self.mimic_weight and self.method != "reconstruct":
            raise ValueError("mimic_weight matches the slimmed teacher's embedding input, which only method "
                             "reconstruct keeps in shape: use it with method reconstruct")
        return self


class CompressionRecipe(RecipeBase):
    task: Literal["noise"] = "noise"
    name: str = Field(description="artefact name, e.g. noise-slim-mn04")
    teacher: TeacherSection
    data: DataSection = DataSection()
    student: StudentSection
    budget: BudgetSection = BudgetSection()
    distil: DistilSection = DistilSection()
    prune: PruneSection = PruneSection()
    gate: GateBase = GateBase()
