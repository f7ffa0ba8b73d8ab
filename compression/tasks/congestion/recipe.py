"""The congestion compression recipe (compression/recipes/congestion.yaml): data with a schema.

Strict sections like the noise recipe's: an unknown or wrong key is an error naming its
dotted path and line. The top level, training, budget and quantise sections are every
recipe's (compression/recipe_base.py); the rest is the detector task's own (held-out
detectors and days, a sequence teacher, a tiny student).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from agent.features.detector import DetectorParams
from agent.schema import StrictModel

from compression.recipe_base import BudgetBase, PositiveInts, RecipeBase, TrainBase, with_defaults


class DataSection(StrictModel):
    val_fraction: float = Field(0.2, gt=0, lt=1, description="share of detectors held out (seeded by `seed`); "
                                                             "every reported number is on them")
    eval_days: int = Field(2, ge=1, description="the last N days are evaluation time: nothing from them trains, "
                                                "and the historical average is computed from the days before")
    tuning_split: bool = Field(False, description="leave the held-out detectors out entirely and hold out the same "
                                                  "share of the training detectors instead: for choosing recipe "
                                                  "settings without looking at the detectors that judge the model")
    tuning_folds: int = Field(1, ge=1, le=20, description="with tuning_split: above 1, cross-fit the warning's "
                                                          "operating point instead: the training detectors in this "
                                                          "many folds, each scored by models trained on the others, "
                                                          "the curve pooled over all of them (more detectors and "
                                                          "jam onsets than one split); writes no model")
    time_split_only: bool = Field(False, description="hold out no detector: every detector trains on the days "
                                                     "before the evaluation days and is scored on those days (the "
                                                     "published Los-loop protocol, for comparison only: the model has "
                                                     "then seen every detector it is scored on)")
    max_detectors: int | None = Field(None, ge=2, description="use only the first N detectors of the file "
                                                               "(smoke runs)")
    calibration_windows: int = Field(512, ge=1, description="training windows (seeded draw) that calibrate INT8")
    parity_windows: int = Field(512, ge=1, description="held-out windows on which ONNX must match PyTorch")
    profile_dropout: float = Field(0.25, ge=0, lt=1, description="with a profile in the front-end: share of "
                                                                 "training windows shown without it, as a device "
                                                                 "in its first days sees them")

    @model_validator(mode="after")
    def _one_split(self) -> DataSection:
        if self.tuning_split and self.time_split_only:
            raise ValueError("tuning_split and time_split_only exclude each other: choose one split")
        if self.tuning_folds > 1 and not self.tuning_split:
            raise ValueError("tuning_folds > 1 cross-fits on the training detectors: set tuning_split: true too")
        return self


class TrainSection(with_defaults(TrainBase, epochs=Field(4, description="passes over windows_per_epoch windows"),
                                  lr=2e-3, weight_decay=1e-4, batch_size=512)):
    windows_per_epoch: int | None = Field(None, ge=1, description="a seeded draw of training windows per epoch "
                                                                  "(neighbouring windows overlap by all but one "
                                                                  "reading); all of them when unset")


class TeacherSection(StrictModel):
    checkpoint: str | None = Field(None, description="a teacher (.pt) from an earlier run of this recipe to reuse; "
                                                     "refused unless trained on the same detectors and days")
    hidden: int = Field(64, ge=4, description="GRU width")
    layers: int = Field(1, ge=1, description="GRU layers")
    forecast_steps: int = Field(6, ge=1, description="pretraining forecasts the speed 1..N steps ahead")
    pretrain: TrainSection = TrainSection()
    finetune: TrainSection = TrainSection(epochs=3, lr=1e-3)


class StudentSection(StrictModel):
    type: Literal["mlp"] = Field("mlp", description="a multilayer perceptron on the front-end's vector")
    hidden: PositiveInts = Field([96, 96], description="widths of the hidden layers")


class DistilSection(TrainSection):
    temperature: float = Field(2.0, gt=0, description="softmax temperature of the teacher's soft states")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the teacher's states and speed; 1 - alpha "
                                                      "on the true ones")


class LossSection(StrictModel):
    speed_weight: float = Field(1.0, ge=0, description="weight of the speed error (in units of 5 mph, squared) "
                                                       "beside the states' cross-entropy")
    tune_bias: bool = Field(True, description="after training, shift the slowed and congested logits by the "
                                              "offsets that maximise macro-F1 on the training windows")


class BudgetSection(with_defaults(BudgetBase, max_params=20_000)):
    pass


class GateSection(StrictModel):
    min_f1_gain: float = Field(0.0, description="macro-F1 of the shipped model minus persistence's, at least")
    max_rmse_ratio: float = Field(1.0, gt=0, description="the shipped model's speed RMSE over persistence's, "
                                                         "at most")
    max_f1_drop: float = Field(0.02, ge=0, description="macro-F1 the shipped model may lose against the teacher")
    max_onnx_diff: float = Field(1e-4, gt=0, description="largest |logit| or |speed| difference allowed between "
                                                         "PyTorch FP32 and its ONNX export on held-out windows")


class TargetsSection(StrictModel):
    """Reported against, not gated: the issue's targets."""
    f1_gain: float = Field(0.02, description="macro-F1 over persistence's")
    rmse_ratio: float = Field(0.92, gt=0, description="speed RMSE relative to persistence's")
    rmse_mph: float = Field(5.0, gt=0, description="speed RMSE in mph")


class WarningSection(StrictModel):
    """The congestion warning's operating point (agent/features/warning.py) and how a tuning run picks it."""
    threshold: float = Field(0.5, gt=0, le=1, description="warn when P(congested at the horizon) reaches this; "
                                                           "chosen with data.tuning_split=true, never on the "
                                                           "held-out detectors")
    congested_now: bool = Field(True, description="also warn while the detector reads congested now")
    release: float | None = Field(None, ge=0, le=1, description="a warning ends when the score falls below this "
                                                                "(the rule's hysteresis); default: the threshold")
    release_fractions: list[float] = Field([1.0, 0.75, 0.5], min_length=1, description="release points of the "
                                           "model's operating curve, as fractions of each threshold")
    false_alarm_quantile: float = Field(0.9, gt=0, lt=1, description="a point meets the false-alarm bound when "
                                        "this quantile of its false alarms over detector resamples does")
    bootstrap_resamples: int = Field(1000, ge=10, description="detector resamples for that quantile")
    false_alarm_group: int | None = Field(None, ge=1, description="detectors per resample: the size of the group "
                                          "of new streets the bound must hold for (default: every detector "
                                          "scored, the usual bootstrap of their mean)")
    min_caught: float = Field(0.95, ge=0, le=1, description="selection bound: share of jam onsets caught at all")
    max_false_alarms_per_detector_day: float = Field(0.5, ge=0, description="selection bound: false alarms per "
                                                                              "detector and day")
    sweep: list[float] = Field([0.05, 0.075, 0.1, 0.125, 0.15, 0.175, 0.2, 0.225, 0.25, 0.275, 0.3, 0.35, 0.4,
                                0.45, 0.5, 0.6, 0.7], min_length=1,
                               description="thresholds of the model's operating curve")
    baseline_sweep_mph: list[float] = Field([35.0, 37.5, 40.0, 42.5, 45.0, 47.5, 50.0, 55.0], min_length=1,
                                            description="speeds under which persistence / the historical average "
                                                        "warn: their operating curves")

    @field_validator("sweep")
    @classmethod
    def _probabilities(cls, v: list[float]) -> list[float]:
        if any(not 0 < x <= 1 for x in v):
            raise ValueError("every threshold must be in (0, 1]")
        return sorted(v)

    @field_validator("release_fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if any(not 0 <= x <= 1 for x in v):
            raise ValueError("every release fraction must be in [0, 1]")
        return v

    @model_validator(mode="after")
    def _release_below_threshold(self) -> "WarningSection":
        if self.release is not None and self.release > self.threshold:
            raise ValueError(f"release ({self.release}) must be <= threshold ({self.threshold})")
        return self


class CongestionRecipe(RecipeBase):
    task: Literal["congestion"] = "congestion"
    name: str = Field(description="artefact name, e.g. congestion-mlp")
    seed: int = Field(0, description="seeds the detector split, the weights and the batch order")
    frontend: dict[str, Any] = Field(default_factory=lambda: DetectorParams().to_dict(),
                                     description="detector front-end (DetectorParams): the contract")
    data: DataSection = DataSection()
    teacher: TeacherSection = TeacherSection()
    student: StudentSection = StudentSection()
    loss: LossSection = LossSection()
    distil: DistilSection = DistilSection()
    budget: BudgetSection = BudgetSection()
    gate: GateSection = GateSection()
    targets: TargetsSection = TargetsSection()
    warning: WarningSection = WarningSection()

    @field_validator("frontend")
    @classmethod
    def _valid_frontend(cls, v: dict[str, Any]) -> dict[str, Any]:
        return DetectorParams.from_dict(v).to_dict()  # raises with the bad parameter named
