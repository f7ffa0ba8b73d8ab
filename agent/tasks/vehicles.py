"""Vehicle classification: camera crops -> image front-end -> model -> rule.

Each crop is one window (no overlap in time); the rule's smoothing, if configured,
runs over consecutive crops of the same camera.
"""

from __future__ import annotations

import numpy as np

from ..config import ModelTaskConfig
from ..features.image import ImageParams, ImageParamsError, preprocess
from ..payloads import ImageFrame
from ..rules import Rule, softmax
from . import Detection, LoadedModel, dry_run, frontend_params
from .registry import TaskSpec, register


class VehiclesTaskConfig(ModelTaskConfig):
    pass


class VehiclesTask:
    kind = "vehicles"
    consumes = "camera"
    frontend_kind = "image"

    def __init__(self, cfg: VehiclesTaskConfig, model: LoadedModel, input_rate: int = 0):
        contract = model.contract
        self.params = frontend_params(contract, ImageParams.from_dict, (ImageParamsError, TypeError))
        self.cfg, self.model = cfg, model
        Rule(cfg.rule, contract.labels, "tasks.vehicles.rule")
        dry_run(model, np.zeros(self.params.output_shape, np.float32))
        self._rules: dict[str, Rule] = {}
        self.image_size = self.params.size  # (h, w): the camera decodes big JPEGs only as far as this needs

    def forget(self, sensor: str) -> None:
        self._rules.pop(sensor, None)

    def handle(self, frame: ImageFrame) -> list[Detection]:
        x = preprocess(frame.image, self.params)
        probs = softmax(self.model.backend.run(x[None])[0])
        rule = self._rules.setdefault(frame.sensor, Rule(self.cfg.rule, self.model.contract.labels))
        ts = int(frame.capture_ms)
        return [Detection(self.kind, frame.sensor, ev.cls, ev.confidence, ts, 0, self.model.info)
                for ev in rule.update(probs, ts, ts)]


register(TaskSpec("vehicles", VehiclesTask.consumes, VehiclesTaskConfig, frontend=VehiclesTask.frontend_kind,
                  factory=lambda cfg, model, ctx: VehiclesTask(cfg, model, ctx.sample_rate)))
