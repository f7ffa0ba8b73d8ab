"""The compression recipe: which stages run, on what, to which budget and gate (data with a schema).

Every section is a strict model (unknown keys are errors). ``load_recipe`` reports
problems with the YAML line and the dotted key, like device configs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from agent.features.audio import LogMelParams
from agent.schema import StrictModel, load_yaml

from .teachers.recipe import AugmentSection


class TeacherSection(StrictModel):
    checkpoint: str | None = Field(None, description="fine-tuned teacher (.pt written by `roadside teacher "
                                                     "train`), relative to the repository or absolute")
    huggingface: str | None = Field(None, description="or: a Hugging Face audio-classification model folder "
                                                      "(save_pretrained; AST-style log-mel extractor), read "
                                                      "locally; needs the [hf] extra")

    @model_validator(mode="after")
    def _one_teacher(self) -> "TeacherSection":
        if (self.checkpoint is None) == (self.huggingface is None):
            raise ValueError("give exactly one of checkpoint or huggingface")
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


class BudgetSection(StrictModel):
    max_params: int = Field(128_000, ge=1, description="parameters of the shipped student")
    max_macs_per_second: float = Field(30e6, gt=0, description="multiply-accumulates per second of audio")


class DistilSection(StrictModel):
    epochs: int = Field(3, ge=0, description="knowledge-distillation epochs before pruning")
    lr: float = Field(5e-4, gt=0, description="peak AdamW learning rate (warm-up + cosine)")
    weight_decay: float = Field(0.02, ge=0)
    batch_size: int = Field(32, ge=1)
    temperature: float = Field(2.0, gt=0, description="softmax temperature of the soft targets")
    alpha: float = Field(0.7, ge=0, le=1, description="weight of the teacher term; 1 - alpha on the labels")
    freeze_bn: bool = Field(True, description="keep BatchNorm statistics fixed while training: the pruning "
                                              "re-fits are calibrated against them, and ~900 clips are too few "
                                              "to re-estimate them")
    views_per_clip: int = Field(10, ge=1, description="distinct seeded augmented views per clip; the "
                                                     "teacher's outputs are cached per view and reused")
    augment: AugmentSection = AugmentSection()


class BlockKeep(StrictModel):
    keep: float = Field(gt=0, le=1, description="fraction of the block's expanded channels kept (rounded to 8)")
    se_keep: float = Field(1.0, ge=0, le=1, description="fraction of its squeeze-excitation bottleneck kept; "
                                                        "0 removes the SE (the projection re-fit absorbs its mean gate)")


class PrunePlan(StrictModel):
    """Where the parameters go: mn04's blocks differ 100x in size, so a uniform fraction either
    guts the cheap early blocks (which carry the accuracy) or leaves the wide late ones too big."""
    blocks: dict[int, BlockKeep] = Field(description="by block index (body.features.N); unlisted blocks keep "
                                                     "every channel")
    embedding: float = Field(1.0, gt=0, le=1, description="fraction of the last conv's channels kept")
    hidden: float = Field(1.0, gt=0, le=1, description="fraction of the classifier's hidden units kept")


class PruneSection(StrictModel):
    enabled: bool = True
    method: Literal["reconstruct", "magnitude"] = Field(
        "reconstruct", description="reconstruct: keep channels by their contribution on calibration clips and "
                                   "re-fit the next layer by least squares (slim_teacher only); magnitude: L2 "
                                   "ranking per layer (any student)")
    target_params: int = Field(120_000, ge=1, description="prune until the model has at most this many parameters "
                                                          "(uniform fractions; not used with a plan)")
    plan: PrunePlan | None = Field(None, description="reconstruct only: per-block fractions, reached in `steps` "
                                                     "geometric steps; the budget gate checks the result")
    steps: int = Field(3, ge=1, description="prune in this many steps, each followed by KD fine-tuning")
    epochs_per_step: int = Field(5, ge=0, description="KD epochs after each pruning step")
    final_epochs: int | None = Field(None, ge=0, description="KD epochs after the last step (default epochs_per_step)")
    lr: float = Field(5e-4, gt=0, description="peak learning rate of the KD fine-tuning after each step")
    round_to: int = Field(8, ge=1, description="keep channel counts multiples of this (tensor cores want 8)")
    max_layer_ratio: float = Field(0.9, gt=0, lt=1, description="never remove more of one layer than this")


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


class GateSection(StrictModel):
    max_drop: float = Field(2.0, ge=0, description="accuracy points the shipped INT8 model may lose against the teacher")
    max_onnx_logit_diff: float = Field(1e-4, gt=0, description="largest |logit| difference allowed between the "
                                                              "PyTorch FP32 model and its ONNX export on real clips")


class CompressionRecipe(StrictModel):
    task: Literal["noise"] = "noise"
    name: str = Field(description="artefact name, e.g. noise-slim-mn04")
    version: str = Field(description="artefact version (semver)")
    seed: int = 0
    threads: int = Field(2, ge=1, description="torch threads for training")
    teacher: TeacherSection
    data: DataSection = DataSection()
    student: StudentSection
    budget: BudgetSection = BudgetSection()
    distil: DistilSection = DistilSection()
    prune: PruneSection = PruneSection()
    quantise: QuantiseSection = QuantiseSection()
    engine: EngineSection = EngineSection()
    gate: GateSection = GateSection()


# task -> "module:Class" of its recipe schema; each task's chain lives in its own module
# (CHAINS in pipeline.py), so adding a task adds one line here and one there.
RECIPES: dict[str, str] = {"noise": "compression.recipe:CompressionRecipe",
                           "vehicles": "compression.chains.vehicles_recipe:VehiclesRecipe",
                           "congestion": "compression.chains.congestion_recipe:CongestionRecipe"}


def recipe_class(task: Any, source: str) -> type[StrictModel]:
    import importlib

    from agent.schema import ConfigError

    if task not in RECIPES:
        raise ConfigError(source, [f"task: {task!r} is not a known task (known: {sorted(RECIPES)})"])
    module, name = RECIPES[task].split(":")
    return getattr(importlib.import_module(module), name)


def load_recipe(path: Path | str, **overrides: Any) -> StrictModel:
    """Load and validate against the schema of the recipe's ``task``; ``overrides`` are dotted
    keys (``{"distil.epochs": 1}``), validated too."""
    import yaml

    from agent.schema import validate

    try:
        task = (yaml.safe_load(Path(path).read_text()) or {}).get("task", "noise")
    except (OSError, yaml.YAMLError, AttributeError):
        task = "noise"  # load_yaml below reports the unreadable file or bad YAML with its line
    recipe = load_yaml(path, recipe_class(task, str(path)))
    if not overrides:
        return recipe
    data = recipe.model_dump()
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return validate(type(recipe), data, f"{path} (with overrides {sorted(overrides)})")
