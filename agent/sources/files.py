"""Recordings played as sensors would send them: audio files, an image folder, a detector CSV.

``play`` is the one timeline both the ``files`` source and ``roadside replay`` use: audio in
chunks of ``chunk_ms``, an image every ``image_interval_s``, a detector reading every
``detector_interval_s`` (stream seconds), merged in time order and paced at ``rate`` x
real time (0 = as fast as possible).

Detector CSV, either
- long: a header with ``ts,sensor,speed_mph`` (and optionally ``period_s,count``); ts in
  UTC ms or ISO-8601; or
- wide, like Los-loop's ``los_speed.csv``: a header of detector ids and one row per 5-minute
  step with no time column; the first column is played as sensor ``<id>``, from
  ``WIDE_START`` (the data set's first midnight) onwards.
"""

from __future__ import annotations

import csv
import datetime as dt
import heapq
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..config import FilesSourceConfig
from ..payloads import encode_audio, encode_detector
from . import Message, SourceContext

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
WIDE_START = dt.datetime(2012, 3, 1, tzinfo=dt.timezone.utc)


def _files(path: Path, suffixes: set[str]) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    return sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes)


def audio_chunks(path: Path, sample_rate: int, chunk_ms: int) -> Iterator[tuple[float, np.ndarray]]:
    """(stream seconds, mono float32 chunk at ``sample_rate``) over the files one after another."""
    import soundfile as sf

    from ..features.resample import resample

    n = sample_rate * chunk_ms // 1000
    t, carry = 0.0, np.zeros(0, np.float32)
    for f in _files(path, AUDIO_SUFFIXES):
        x, sr = sf.read(str(f), dtype="float32", always_2d=True)
        x = resample(x.mean(axis=1), sr, sample_rate)
        buf = np.concatenate([carry, x])
        k = buf.size // n
        for i in range(k):
            yield t, buf[i * n:(i + 1) * n]
            t += chunk_ms / 1000
        carry = buf[k * n:]


def _timeline(items: Iterator, interval: float) -> Iterator[tuple[float, object]]:
    for i, item in enumerate(items):
        yield i * interval, item


def detector_rows(path: Path) -> Iterator[tuple[str, int, float | None, int, int | None]]:
    """(sensor, ts ms, speed or None, period_s, count or None) from a long or wide CSV."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader)]
        if "ts" in header and "speed_mph" in header:
            col = {h: i for i, h in enumerate(header)}
            for row in reader:
                ts = row[col["ts"]]
                ts_ms = int(float(ts)) if ts.replace(".", "", 1).isdigit() else \
                    int(dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)
                speed = row[col["speed_mph"]].strip()
                yield (row[col["sensor"]] if "sensor" in col else "loop", ts_ms,
                       float(speed) if speed not in ("", "nan", "NaN") else None,
                       int(row[col["period_s"]]) if "period_s" in col else 300,
                       int(row[col["count"]]) if "count" in col and row[col["count"]] else None)
        else:
            start = int(WIDE_START.timestamp() * 1000)
            for i, row in enumerate(reader):
                yield header[0], start + i * 300_000, float(row[0]) if row[0] else None, 300, None


def play(audio: Path | None, images: Path | None, detectors: Path | None, *, sample_rate: int, chunk_ms: int,
         image_interval_s: float, detector_interval_s: float) -> Iterator[tuple[float, str, str, object]]:
    """The merged timeline: (stream seconds, kind, sensor, item); audio items are float chunks."""
    streams = []
    if audio is not None:
        streams.append(((t, "audio", "mic0", x) for t, x in audio_chunks(audio, sample_rate, chunk_ms)))
    if images is not None:
        streams.append(((t, "camera", "cam0", p.read_bytes())
                        for t, p in _timeline(iter(_files(images, IMAGE_SUFFIXES)), image_interval_s)))
    if detectors is not None:
        streams.append(((t, "detector", r[0], encode_detector(r[1], r[2], r[3], r[4]))
                        for t, r in _timeline(detector_rows(detectors), detector_interval_s)))
    return heapq.merge(*streams, key=lambda e: e[0])


def run_timeline(events: Iterator[tuple[float, str, str, object]], rate: float, sample_rate: int,
                 send: Callable[[str, str, bytes], None], stop: threading.Event | None = None) -> dict[str, int]:
    """Pace and encode the timeline; ``send(kind, sensor, payload)``. Returns bytes sent per kind."""
    start, seqs, sent = time.monotonic(), {}, {}
    for t, kind, sensor, item in events:
        if stop is not None and stop.is_set():
            break
        if rate > 0:
            delay = start + t / rate - time.monotonic()
            if delay > 0 and (stop.wait(delay) if stop is not None else time.sleep(delay)):
                break
        if kind == "audio":
            seq = seqs.get(sensor, 0)
            seqs[sensor] = seq + 1
            duration_us = int(item.size * 1e6 / sample_rate)  # the chunk's first sample was this long ago
            payload = encode_audio(item, sample_rate, seq, int(time.time() * 1e6) - duration_us)
        else:
            payload = item
        send(kind, sensor, payload)
        sent[kind] = sent.get(kind, 0) + len(payload)
    return sent


class FilesSource:
    def __init__(self, cfg: FilesSourceConfig, ctx: SourceContext):
        self.cfg, self.ctx = cfg, ctx
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="source-files", daemon=True)
        for p in (cfg.audio, cfg.images, cfg.detectors):
            if p is not None and not p.exists():
                raise FileNotFoundError(f"sources: files: {p} does not exist")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        c = self.cfg
        events = play(c.audio, c.images, c.detectors, sample_rate=self.ctx.audio.sample_rate, chunk_ms=c.chunk_ms,
                      image_interval_s=c.image_interval_s, detector_interval_s=c.detector_interval_s)
        run_timeline(events, c.rate, self.ctx.audio.sample_rate,
                     lambda kind, sensor, payload: self.ctx.emit(Message(kind, sensor, payload, time.time() * 1000),
                                                                 block=True), self._stop)
