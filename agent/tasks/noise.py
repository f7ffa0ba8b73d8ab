"""Noise classification: audio chunks -> sliding window -> (resample) -> log-mel -> model -> rule.

Window length comes from the contract (``window_seconds``); the hop from the config,
else the contract's ``hop_seconds``, else 1 s. The microphones' rate is the config's
``audio.sample_rate``; a model trained at another rate (the 32 kHz teacher) gets each
window resampled with the shared resampler before its front-end, so a window is
computed exactly as in training (the whole window at once, never chunk by chunk).
A gap in a sensor's sequence numbers restarts its window and smoothing.
"""

from __future__ import annotations

import numpy as np

from pydantic import Field

from ..config import ModelTaskConfig
from ..features.audio import LogMelParams, LogMelParamsError, log_mel
from ..features.resample import resample
from ..backends.contract import ContractError
from ..payloads import AudioChunk
from ..rules import Rule, softmax
from ..window import SlidingWindow
from . import Detection, LoadedModel, check_frontend, dry_run, run_example
from .registry import TaskSpec, register

DEFAULT_HOP_SECONDS = 1.0


class NoiseTaskConfig(ModelTaskConfig):
    hop_seconds: float | None = Field(None, gt=0, le=60,
                                      description="window hop; default: the contract's hop_seconds, else 1 s")


class NoiseTask:
    kind = "noise"
    consumes = "audio"
    frontend_kind = "logmel"

    def __init__(self, cfg: NoiseTaskConfig, model: LoadedModel, input_rate: int):
        contract = model.contract
        try:
            self.params = LogMelParams.from_dict(contract.frontend)
        except LogMelParamsError as e:
            raise ContractError(f"{contract.model_path}: frontend: {e}") from None
        check_frontend(contract, self.params)
        self.cfg, self.model, self.input_rate = cfg, model, input_rate
        self.window = round(contract.window_seconds * input_rate)
        hop_s = cfg.hop_seconds or float(contract.extra.get("hop_seconds") or DEFAULT_HOP_SECONDS)
        self.hop = max(1, round(hop_s * input_rate))
        self.window_ms = round(1000 * self.window / input_rate)
        Rule(cfg.rule, contract.labels, "tasks.noise.rule")  # refuse unknown classes now, not per sensor
        example = self.features(np.zeros(self.window, np.float32))
        try:  # models take (B, 1, n_mels, T) (a CNN's image layout) or (B, n_mels, T)
            out, self._channel = run_example(model, example[None]), True
        except ContractError:
            out, self._channel = run_example(model, example), False
        dry_run(model, example, out)
        self._sensors: dict[str, tuple] = {}  # sensor -> (SlidingWindow, Rule, next seq)

    def features(self, window: np.ndarray) -> np.ndarray:
        """(window samples,) at the input rate -> (n_mels, T) as the model was trained."""
        if self.params.sample_rate != self.input_rate:
            window = resample(window, self.input_rate, self.params.sample_rate)
        return log_mel(window, self.params)

    def forget(self, sensor: str) -> None:
        self._sensors.pop(sensor, None)

    def _state(self, sensor: str) -> list:
        if sensor not in self._sensors:
            self._sensors[sensor] = [SlidingWindow(self.window, self.hop),
                                     Rule(self.cfg.rule, self.model.contract.labels), None]
        return self._sensors[sensor]

    def handle(self, chunk: AudioChunk) -> list[Detection]:
        state = self._state(chunk.sensor)
        win, rule, expected = state
        if expected is not None and chunk.seq != expected:
            win.reset()  # a lost chunk: never glue audio across a gap
            rule.reset()
        state[2] = (chunk.seq + 1) % (1 << 32)
        out = []
        for end, w in win.push(chunk.samples):
            feats = self.features(w)
            x = feats[None, None] if self._channel else feats[None]
            probs = softmax(self.model.backend.run(x)[0])
            end_ms = int(round(chunk.capture_ms + 1000.0 * end / self.input_rate))
            for ev in rule.update(probs, end_ms - self.window_ms, end_ms):
                out.append(Detection(self.kind, chunk.sensor, ev.cls, ev.confidence, ev.end_ms,
                                     ev.end_ms - ev.start_ms, self.model.info))
        return out


register(TaskSpec("noise", NoiseTask.consumes, NoiseTaskConfig, frontend=NoiseTask.frontend_kind,
                  factory=lambda cfg, model, ctx: NoiseTask(cfg, model, ctx.sample_rate)))
