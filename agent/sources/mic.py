"""A live microphone through ``sounddevice`` (PortAudio): optional, imported only when configured."""

from __future__ import annotations

import time

import numpy as np

from ..config import MicSourceConfig
from ..payloads import encode_audio
from . import Message, SourceContext, SourceUnavailable


class MicSource:
    def __init__(self, cfg: MicSourceConfig, ctx: SourceContext):
        try:
            import sounddevice
        except (ImportError, OSError) as e:  # OSError: the module is there but PortAudio is not
            raise SourceUnavailable(f"sources: type 'mic' needs the sounddevice package and PortAudio "
                                    f"(pip install sounddevice; apt install libportaudio2): {e}") from None
        self.ctx, self.seq = ctx, 0
        rate, channels = ctx.audio.sample_rate, ctx.audio.channels
        self.stream = sounddevice.InputStream(samplerate=rate, channels=channels, dtype="int16", device=cfg.device,
                                              blocksize=rate * cfg.chunk_ms // 1000, callback=self._callback)

    def _callback(self, data: np.ndarray, frames: int, time_info, status) -> None:
        if status:
            self.ctx.health.drop("mic_overflow", str(status))
        now_us = int(time.time() * 1e6) - frames * 1_000_000 // self.ctx.audio.sample_rate
        payload = encode_audio(data.copy(), self.ctx.audio.sample_rate, self.seq, now_us)
        self.seq += 1
        self.ctx.emit(Message("audio", "mic", payload, time.time() * 1000.0))

    def start(self) -> None:
        self.stream.start()

    def stop(self) -> None:
        self.stream.stop()
        self.stream.close()
