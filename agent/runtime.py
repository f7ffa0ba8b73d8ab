"""``roadside agent``: wires source -> worker (decode, tasks) -> outbox -> uplink, and stops cleanly.

Start order matters: the config was validated by the caller; here every model is
loaded and checked against the device (contract, front-end, dry run) and the outbox
opened *before* any connection is made, so a bad model or an unwritable state folder
stops the agent at once with a message naming the key. SIGTERM and SIGINT stop it
cleanly (state "offline" published, queued input drained up to a second); SIGKILL or
power loss lose no stored alert (the outbox), only sensor input not yet windowed.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from pathlib import Path

from . import __version__
from .alerts import AlertTooLarge, Origin, encode_alert, encode_summary
from .config import AgentConfig, config_hash, resolve
from .health import Health, clock_synced, heartbeat_payload
from .outbox import ALERT, SUMMARY, Outbox
from .payloads import PayloadError, decode_audio, decode_camera, decode_detector
from .sources import Message, SourceContext, create_source
from .tasks import Detection, LevelReport, load_model
from .tasks.congestion import CongestionTask
from .tasks.level import LevelTask
from .tasks.noise import NoiseTask
from .tasks.vehicles import VehiclesTask
from .uplink import Uplink

log = logging.getLogger("roadside.agent")
TASKS = {"noise": NoiseTask, "vehicles": VehiclesTask, "congestion": CongestionTask}
QUEUE_MAX = 2000


class Agent:
    def __init__(self, cfg: AgentConfig, config_path: Path | str | None = None):
        self.cfg = cfg
        dev = cfg.device
        self.state_dir = resolve(dev.state_dir, config_path)
        self.health = Health(cfg.health.log_every_s)
        self.tasks, models = self._load_tasks(config_path)
        self.outbox = Outbox(resolve(cfg.outbox.path, config_path) if cfg.outbox.path else
                             self.state_dir / "outbox.sqlite", cfg.outbox.max_bytes, cfg.outbox.hard_cap_bytes)
        self.origin = Origin(dev.id, self.outbox.next_boot(), config_hash(cfg))
        self.synced = self._time_synced()
        state = {"boot": self.origin.boot, "agent": __version__, "ch": self.origin.config_hash, "models": models}
        self.uplink = Uplink(cfg.uplink, dev.site, dev.id, self.outbox, state, self.origin.boot)
        qmax = max([getattr(s, "queue_max", QUEUE_MAX) for s in cfg.sources])
        self.queue: queue.Queue[Message] = queue.Queue(maxsize=qmax)
        ctx = SourceContext(dev.id, cfg.audio, self.health, self.queue)
        self.sources = [create_source(s, ctx) for s in cfg.sources]
        self._stop = threading.Event()

    def _load_tasks(self, config_path) -> tuple[dict[str, list], dict]:
        by_input: dict[str, list] = {"audio": [], "camera": [], "detector": []}
        models = {}
        for name, task_cls in TASKS.items():
            tcfg = getattr(self.cfg.tasks, name)
            if tcfg is None:
                continue
            model = load_model(name, task_cls.frontend_kind, resolve(tcfg.model, config_path), tcfg.backend,
                               self.state_dir / "engines")
            kwargs = {"timezone": self.cfg.device.timezone} if name == "congestion" else {}
            task = task_cls(tcfg, model, self.cfg.audio.sample_rate, **kwargs)
            by_input[task.consumes].append(task)
            models[name] = {"name": model.info.name, "version": model.info.version, "sha256": model.info.sha256,
                            "backend": model.backend.name, **({"fallback": model.backend.fallback_reason}
                                                              if model.backend.fallback_reason else {})}
            log.info("task %s: %s (%s) on %s", name, model.contract.model_path, model.info.sha256[:12],
                     model.backend.name)
        if self.cfg.level is not None:
            by_input["audio"].append(LevelTask(self.cfg.level, self.cfg.audio.sample_rate, self.cfg.device.timezone))
        return by_input, models

    def _time_synced(self) -> bool:
        mode = self.cfg.device.time_quality
        return clock_synced() if mode == "auto" else mode == "synced"

    # ---------------------------------------------------------------------------- input

    def decode(self, msg: Message):
        """Wire bytes -> a checked reading, or PayloadError (counted by the caller)."""
        if msg.kind == "audio":
            chunk = decode_audio(msg.payload, msg.sensor)
            a = self.cfg.audio
            if chunk.sample_rate != a.sample_rate:
                raise PayloadError("sample_rate", f"{chunk.sample_rate} Hz, the device expects {a.sample_rate} Hz")
            if chunk.channels != a.channels:
                raise PayloadError("channels", f"{chunk.channels} channels, the device expects {a.channels}")
            if chunk.samples.size > a.max_chunk_seconds * a.sample_rate:
                raise PayloadError("too_long", f"{chunk.samples.size} samples (max {a.max_chunk_seconds} s)")
            return chunk
        if msg.kind == "camera":
            return decode_camera(msg.payload, msg.sensor, msg.received_ms)
        return decode_detector(msg.payload, msg.sensor)

    def process(self, msg: Message) -> int:
        """One sensor message through its tasks; returns the number of messages stored."""
        tasks = self.tasks.get(msg.kind, [])
        try:
            reading = self.decode(msg)
        except PayloadError as e:
            self.health.drop(e.reason, f"{msg.kind}/{msg.sensor}: {e}")
            return 0
        stored = 0
        for task in tasks:
            try:
                outputs = task.handle(reading)
            except PayloadError as e:
                self.health.drop(e.reason, f"{msg.kind}/{msg.sensor}: {e}")
                continue
            except Exception as e:  # a task bug must not take the pole down: count, log, go on
                self.health.drop("task_error", f"{task.kind}: {type(e).__name__}: {e}")
                continue
            for out in outputs:
                stored += self.store(out)
        return stored

    def store(self, out: Detection | LevelReport) -> int:
        o, synced = self.origin, self.synced
        try:
            if isinstance(out, LevelReport):
                s = out.summary
                self.outbox.put(SUMMARY, "summary", lambda seq: encode_summary(
                    o, seq, ts_ms=out.ts_ms, synced=synced, sensor=out.sensor, seconds=s.seconds, laeq=s.laeq,
                    lafmax=s.lafmax, l10=s.l10, l90=s.l90, limit_db=out.limit_db, period=out.period))
                self.health.count("summaries")
            else:
                self.outbox.put(ALERT, f"alert/{out.kind}", lambda seq: encode_alert(
                    o, seq, ts_ms=out.ts_ms, synced=synced, kind=out.kind, sensor=out.sensor, cls=out.cls,
                    confidence=out.confidence, window_ms=out.window_ms, metrics=out.metrics, model=out.model))
                self.health.count("alerts")
                log.info("alert %s %s %.2f (%s)", out.kind, out.cls, out.confidence, out.sensor)
        except AlertTooLarge as e:
            self.health.drop("alert_too_large", str(e))
            return 0
        self.uplink.notify()
        return 1

    # ------------------------------------------------------------------------ lifecycle

    def heartbeat(self) -> None:
        self.synced = self._time_synced()
        up = self.uplink
        extra = {"q": self.queue.qsize(), "out": self.outbox.stats(), "tq": "s" if self.synced else "f",
                 "up": {"sent": up.sent, "acked": up.acked, "replayed": up.replayed, "bytes": up.bytes_sent,
                        "connects": up.conn.connects}}
        up.publish_live("health", heartbeat_payload(self.health, extra))

    def stop(self) -> None:
        self._stop.set()

    def run(self, install_signals: bool = True) -> int:
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self._stop.set())
        self.uplink.start()
        for s in self.sources:
            s.start()
        log.info("agent %s boot %d running (config %s)", self.origin.device, self.origin.boot, self.origin.config_hash)
        next_beat = time.monotonic() + self.cfg.uplink.heartbeat_s
        try:
            while not self._stop.is_set():
                try:
                    msg = self.queue.get(timeout=0.2)
                except queue.Empty:
                    msg = None
                if msg is not None:
                    self.process(msg)
                if time.monotonic() >= next_beat:
                    self.heartbeat()
                    next_beat = time.monotonic() + self.cfg.uplink.heartbeat_s
        finally:
            for s in self.sources:
                s.stop()
            self._drain(1.0)
            self.uplink.stop()
            self.outbox.close()
            log.info("agent stopped")
        return 0

    def _drain(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                self.process(self.queue.get_nowait())
            except queue.Empty:
                return
