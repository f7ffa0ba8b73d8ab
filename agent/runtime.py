"""``roadside agent``: wires source -> worker (decode, tasks) -> outbox -> uplink, and stops cleanly.

Start order matters: the config was validated by the caller; here the files it names are
checked (certificates, keys), every model is loaded and checked against the device
(contract, front-end, dry run, smoke inference) and the outbox opened *before* any
connection is made, so a bad model or an unwritable state folder stops the agent at once
with a message naming the key. SIGTERM and SIGINT stop it cleanly (state "offline"
published, queued input drained up to a second); SIGKILL or power loss lose no stored
alert (the outbox), only sensor input not yet windowed. SIGHUP and ``cmd/reload`` reload
the config (``agent.reload``); ``cmd/model`` installs a signed model (``agent.updates``).
The worker reads ``self.taskset`` once per message and a swap replaces it in one
assignment, so a message is handled wholly by the old tasks or wholly by the new ones.
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from . import __version__, taskset
from .alerts import AlertTooLarge, Origin, encode_alert, encode_summary, message_id
from .commands import Commands
from .config import AgentConfig, config_hash, preflight, resolve, resolve_files
from .health import Health, ProcessStats, clock_synced, heartbeat, write_health_file
from .outbox import ALERT, SUMMARY, Outbox, OutboxError
from .payloads import PayloadError, decode_audio, decode_camera, decode_detector
from .sources import Message, SourceContext, create_source
from .tasks import Detection, LevelReport
from .updates import ModelStore, apply_update
from .uplink import Uplink

log = logging.getLogger("roadside.agent")
QUEUE_MAX = 2000
MAX_TIME_MS = 253_402_300_800_000  # 10000-01-01: beyond it no local time exists (day/night, time of day)


def _check_time(ms: float, field: str) -> None:
    """Found by the fault suite's fuzzing: a wild timestamp must be dropped as input, not fail a task later."""
    if not 0 <= ms < MAX_TIME_MS:
        raise PayloadError("bad_time", f"{field} {ms:.0f} ms is not a UTC time between 1970 and 9999")


class Agent:
    def __init__(self, cfg: AgentConfig, config_path: Path | str | None = None,
                 verify_source: Callable[[], object] | None = None):
        self.cfg = cfg  # as written: its hash names the config in every alert
        self.config_path = Path(config_path) if config_path is not None else None
        # a signed bundle's check, run again before a reload reads its config (agent.reload)
        self.verify_source = verify_source
        self.rcfg = resolve_files(cfg, config_path)  # secret and key paths made absolute
        preflight(self.rcfg, str(config_path or "config"))
        dev = cfg.device
        self.state_dir = resolve(dev.state_dir, config_path)
        self.cache_dir = self.state_dir / "engines"
        self.health = Health(cfg.health.log_every_s)
        self.process_stats = ProcessStats()
        self.installed = self.make_store(self.rcfg)
        self.taskset = taskset.build(self.rcfg, config_path, self.cache_dir, self.health, self.installed.candidates)
        self.outbox = Outbox(resolve(cfg.outbox.path, config_path) if cfg.outbox.path else
                             self.state_dir / "outbox.sqlite", cfg.outbox.max_bytes, cfg.outbox.hard_cap_bytes)
        self.origin = Origin(dev.id, self.outbox.next_boot(), config_hash(cfg))
        self.synced = self._time_synced()
        state = {"boot": self.origin.boot, "agent": __version__, "ch": self.origin.config_hash,
                 "models": self.taskset.models}
        self.commands = Commands(self)
        self.uplink = Uplink(self.rcfg.uplink, dev.site, dev.id, self.outbox, state, self.origin.boot,
                             on_command=self.commands.submit)
        self.commands.publish = self.uplink.publish_ack
        qmax = max([getattr(s, "queue_max", QUEUE_MAX) for s in cfg.sources])
        self.queue: queue.Queue[Message] = queue.Queue(maxsize=qmax)
        ctx = SourceContext(dev.id, cfg.audio, self.health, self.queue)
        self.sources = [create_source(s, ctx) for s in self.rcfg.sources]
        self._sensors: dict[str, set[str]] = {}  # kind -> sensors with state (bounded: device.max_sensors)
        self._stop = threading.Event()
        self._hup = threading.Event()
        self.restart_with: AgentConfig | None = None  # set by a reload that needs the connections remade

    @property
    def tasks(self) -> dict[str, list]:
        """Tasks by the input they consume (audio, camera, detector)."""
        return self.taskset.by_input

    def make_store(self, rcfg: AgentConfig) -> ModelStore:
        u = rcfg.updates
        return ModelStore(self.state_dir / "models", u.trusted_keys if u else None, u.keep if u else 2)

    @property
    def health_file(self) -> Path:
        f = self.cfg.health.file
        return resolve(f, self.config_path) if f is not None else self.state_dir / "health.json"

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
            _check_time(chunk.capture_ms, "capture_us")
            return chunk
        if msg.kind == "camera":
            return decode_camera(msg.payload, msg.sensor, msg.received_ms)
        reading = decode_detector(msg.payload, msg.sensor)
        _check_time(reading.ts_ms, "ts")
        return reading

    def _known_sensor(self, kind: str, sensor: str) -> bool:
        """Per-sensor state (windows, meters, rules) is bounded: new sensors beyond the limit are refused."""
        known = self._sensors.setdefault(kind, set())
        if sensor in known:
            return True
        if len(known) >= self.cfg.device.max_sensors:
            return False
        known.add(sensor)
        return True

    def process(self, msg: Message) -> int:
        """One sensor message through its tasks; returns the number of messages stored."""
        tasks = self.taskset.by_input.get(msg.kind, [])  # read once: a swap never splits a message
        try:
            reading = self.decode(msg)
        except PayloadError as e:
            self.health.drop(e.reason, f"{msg.kind}/{msg.sensor}: {e}")
            return 0
        if not self._known_sensor(msg.kind, msg.sensor):
            self.health.drop("too_many_sensors", f"{msg.kind}/{msg.sensor}: over device.max_sensors "
                                                 f"({self.cfg.device.max_sensors})")
            return 0
        self.health.accept(msg.kind)
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
                _, seq, _ = self.outbox.put(ALERT, f"alert/{out.kind}", lambda seq: encode_alert(
                    o, seq, ts_ms=out.ts_ms, synced=synced, kind=out.kind, sensor=out.sensor, cls=out.cls,
                    confidence=out.confidence, window_ms=out.window_ms, metrics=out.metrics, model=out.model))
                self.health.count("alerts")
                log.info("alert %s %s %s %.2f (%s)", message_id(o, seq), out.kind, out.cls, out.confidence,
                         out.sensor)
        except AlertTooLarge as e:
            self.health.drop("alert_too_large", str(e))
            return 0
        except (sqlite3.Error, OutboxError, OSError) as e:  # disk full, I/O error: count it, keep the pole up
            self.health.drop("outbox_error", f"{type(e).__name__}: {e}")
            return 0
        self.uplink.notify()
        return 1

    # ---------------------------------------------------------------------- commands

    def cmd_model(self, cmd) -> dict:
        return apply_update(self, cmd)

    def cmd_reload(self, cmd) -> dict:
        from .reload import reload

        return reload(self, cmd.config)

    def swap(self, tasks: "taskset.TaskSet") -> None:
        """The new task set, in one assignment; the city hears about it in the retained state message."""
        self.taskset = tasks
        self.uplink.update_state(models=tasks.models)

    def apply_config(self, cfg: AgentConfig, rcfg: AgentConfig, tasks: "taskset.TaskSet", store: ModelStore) -> None:
        """A reload that needs no reconnection (agent.reload decided): new tasks, limits and config hash."""
        self.cfg, self.rcfg, self.installed = cfg, rcfg, store
        self.health.log_every_s = cfg.health.log_every_s
        self.origin = replace(self.origin, config_hash=config_hash(cfg))
        self.taskset = tasks
        self.uplink.update_state(models=tasks.models, ch=self.origin.config_hash)
        log.info("config reloaded in place (config %s)", self.origin.config_hash)

    def request_restart(self, cfg: AgentConfig) -> None:
        """Stop after the current command is answered; ``serve`` starts again with ``cfg``."""
        self.restart_with = cfg

    def request_reload(self) -> None:
        self._hup.set()

    # ------------------------------------------------------------------------ lifecycle

    def problems(self) -> list[str]:
        """What makes this agent unhealthy for the container healthcheck (empty: healthy)."""
        out = []
        if not self.uplink.alive():
            out.append("uplink pump thread died")
        if not self.commands.alive():
            out.append("command thread died")
        limit = self.cfg.health.offline_unhealthy_s
        offline = time.monotonic() - self.uplink.conn.changed_at
        if limit is not None and not self.uplink.conn.connected.is_set() and offline > limit:
            out.append(f"city broker unreachable for {offline:.0f} s ({self.uplink.conn.last_error})")
        return out

    def heartbeat(self) -> None:
        self.synced = self._time_synced()
        up = self.uplink
        try:
            out = self.outbox.stats()
        except sqlite3.Error as e:
            out = {"error": str(e)[:100]}
        extra = {"q": self.queue.qsize(), "out": out, "tq": "s" if self.synced else "f",
                 "up": {"sent": up.sent, "acked": up.acked, "alerts": up.alerts_acked, "replayed": up.replayed,
                        "refused": up.refused, "bytes": up.bytes_sent, "connects": up.conn.connects,
                        "online": up.conn.connected.is_set()},
                 "boot": self.origin.boot, "ch": self.origin.config_hash,
                 "models": {name: m["sha256"][:16] for name, m in self.taskset.models.items()},
                 **self.process_stats.snapshot()}
        beat = heartbeat(self.health, extra)
        up.publish_live("health", json.dumps(beat, separators=(",", ":")).encode())
        try:
            write_health_file(self.health_file, beat, self.cfg.uplink.heartbeat_s, self.problems())
        except OSError as e:  # a full disk must not stop the agent; the file going stale says it
            self.health.drop("health_file", f"{self.health_file}: {e.strerror or e}")

    def stop(self) -> None:
        self._stop.set()

    def run(self, install_signals: bool = True) -> int:
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self._stop.set())
            signal.signal(signal.SIGHUP, lambda *_: self._hup.set())
        self.commands.start()
        self.uplink.start()
        for s in self.sources:
            s.start()
        log.info("agent %s boot %d running (config %s)", self.origin.device, self.origin.boot, self.origin.config_hash)
        next_beat, hups = time.monotonic(), 0  # first heartbeat (and health file) at once
        try:
            while not self._stop.is_set():
                try:
                    msg = self.queue.get(timeout=0.2)
                except queue.Empty:
                    msg = None
                if msg is not None:
                    self.process(msg)
                if self._hup.is_set():
                    self._hup.clear()
                    hups += 1
                    self.commands.submit("reload", json.dumps({"id": f"sighup-{self.origin.boot}-{hups}"}).encode())
                if time.monotonic() >= next_beat:
                    self.heartbeat()
                    next_beat = time.monotonic() + self.cfg.uplink.heartbeat_s
        finally:
            for s in self.sources:
                s.stop()
            self._drain(1.0)
            self.commands.stop()
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


def serve(cfg: AgentConfig, config_path: Path | str | None = None,
          verify_source: Callable[[], object] | None = None) -> int:
    """Run the agent; after a reload that needs the connections remade, run it again with the new config.

    If the new config cannot start (it was validated, but e.g. its state folder vanished), the
    previous config is started again and the error logged: a pole never ends up with nothing.
    """
    pending_hup = threading.Event()
    signal.signal(signal.SIGHUP, lambda *_: pending_hup.set())  # until an agent takes over
    previous = cfg
    while True:
        try:
            agent = Agent(cfg, config_path, verify_source)
        except Exception as e:
            if cfg is previous:
                raise
            log.error("restart with the reloaded config failed (%s: %s); starting the previous config again",
                      type(e).__name__, e)
            cfg = previous
            continue
        if pending_hup.is_set():
            pending_hup.clear()
            agent.request_reload()
        rc = agent.run()
        signal.signal(signal.SIGHUP, lambda *_: pending_hup.set())
        if agent.restart_with is None:
            return rc
        previous, cfg = agent.cfg, agent.restart_with
        log.info("restarting with the reloaded config")
