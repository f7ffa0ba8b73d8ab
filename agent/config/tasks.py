"""``tasks:``: one entry per model the device runs; each names its model, backend and alert rule."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from ..schema import StrictModel


class OnnxBackendConfig(StrictModel):
    type: Literal["onnxruntime"]
    threads: int = Field(1, ge=1, le=16, description="intra-op threads (several tasks share the CPU)")


class TensorRTBackendConfig(StrictModel):
    type: Literal["tensorrt"]
    cache_dir: Path | None = Field(None, description="engine cache (default {state_dir}/engines)")
    fp16: bool = True
    dla_core: int | None = Field(None, ge=0, le=1, description="Jetson DLA core, or GPU when unset")
    threads: int = Field(1, ge=1, le=16, description="threads of the onnxruntime fallback")


BackendConfig = Annotated[Union[OnnxBackendConfig, TensorRTBackendConfig], Field(discriminator="type")]


class ClassRule(StrictModel):
    # Not "on"/"off": YAML 1.1 reads those keys as booleans.
    threshold: float = Field(gt=0, le=1, description="smoothed probability that starts an event")
    release: float | None = Field(None, ge=0, le=1,
                                  description="probability that ends it (hysteresis); default 0.8 x threshold")

    @model_validator(mode="after")
    def _below_on(self):
        if self.release is not None and self.release > self.threshold:
            raise ValueError(f"release ({self.release}) must be <= threshold ({self.threshold})")
        return self

    @property
    def release_threshold(self) -> float:
        return self.release if self.release is not None else 0.8 * self.threshold


class RuleConfig(StrictModel):
    smooth_windows: int = Field(1, ge=1, le=60, description="moving average over this many windows")
    min_duration_s: float = Field(0.0, ge=0, le=3600, description="the event must hold this long before it alerts")
    cooldown_s: float = Field(30.0, ge=0, le=86_400, description="no second alert of a class within this time")
    classes: dict[str, ClassRule] = Field(min_length=1, description="the classes that alert, by model label")


class NoiseTaskConfig(StrictModel):
    model: Path = Field(description="ONNX model with manifest.json beside it")
    backend: BackendConfig = OnnxBackendConfig(type="onnxruntime")
    hop_seconds: float | None = Field(None, gt=0, le=60,
                                      description="window hop; default: the contract's hop_seconds, else 1 s")
    rule: RuleConfig


class VehiclesTaskConfig(StrictModel):
    model: Path
    backend: BackendConfig = OnnxBackendConfig(type="onnxruntime")
    rule: RuleConfig


class CongestionTaskConfig(StrictModel):
    model: Path
    backend: BackendConfig = OnnxBackendConfig(type="onnxruntime")
    rule: RuleConfig


class TasksSection(StrictModel):
    noise: NoiseTaskConfig | None = None
    vehicles: VehiclesTaskConfig | None = None
    congestion: CongestionTaskConfig | None = None
