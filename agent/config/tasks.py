"""``tasks:``: one entry per task the device runs, by its registered name; what a model task is configured with."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import ConfigDict, Field, ValidationError, model_serializer, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

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


class ModelTaskConfig(StrictModel):
    """What every task that runs a model is configured with; a task module may extend it."""
    model: Path = Field(description="ONNX model with manifest.json beside it")
    backend: BackendConfig = OnnxBackendConfig(type="onnxruntime")
    rule: RuleConfig


class TasksSection(StrictModel):
    """``tasks:``: one entry per task the device runs, keyed by a name in the task registry
    (agent/tasks/registry.py), each validated by that task's own config model."""
    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _by_registry(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data  # an instance, or not a mapping: pydantic's own error
        from ..tasks import registry

        known = {n: s for n, s in registry.specs().items() if not s.section}
        out, errors = {}, []
        for name, entry in data.items():
            if name not in known:
                errors.append(InitErrorDetails(type=PydanticCustomError(
                    "unknown_task", "unknown task {name} (known: {known})", {"name": repr(name), "known": sorted(known)}),
                    loc=(name,), input=entry))
            elif entry is not None:
                try:
                    out[name] = known[name].config.model_validate(entry)
                except ValidationError as e:  # re-raised below with the task's name in front of each key
                    # as custom errors of the same type and message: pydantic's own Python-side types
                    # (path_type, ...) are unknown to from_exception_data and would raise a KeyError
                    errors += [InitErrorDetails(
                        type=PydanticCustomError(d["type"], "{message}", {"message": d["msg"]}),
                        loc=(name, *d["loc"]), input=d["input"]) for d in e.errors()]
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return out

    @model_serializer(mode="wrap")
    def _every_task(self, handler, info):
        # every registered model task named, absent ones as null: a config's hash does not depend on
        # which task modules happened to be imported, and is what it was before the registry
        d = handler(self)
        if not info.exclude_none:
            from ..tasks import registry
            for name in registry.model_tasks():
                d.setdefault(name, None)
        return d

    def get(self, name: str) -> Any:
        """The task's config entry, or None when this device does not run it."""
        return (self.__pydantic_extra__ or {}).get(name)

    def names(self) -> list[str]:
        return [n for n, v in (self.__pydantic_extra__ or {}).items() if v is not None]
