"""``roadside agent``: wires source -> worker (decode, tasks) -> outbox -> uplink, and stops cleanly.

Start order matters: the config was validated by the caller; here the files it names are
checked (certificates, keys), every model is loaded and checked against the device
(contract, front-end, dry run, smoke inference) and the outbox opened *before* any
connection is made, so a bad model or an unwritable state folder stops the agent at once
with a message naming the key. SIGTERM and SIGINT stop it cleanly (state "offline"
published, queued input drained up to a second); SIGKILL or power loss lose no stored
alert (the outbox), only sensor input not yet windowed. SIGHUP and ``cmd/reload`` reload
the config (``agent.control.reload``); ``cmd/model`` installs a signed model
(``agent.control.model``); ``cmd/shadow``, ``cmd/promote``, ``cmd/abort`` run a candidate beside
it (``agent.control.shadow``, scored by ``agent.shadow``). Commands reach the agent only through
``agent.control.host.ControlHost``, which ``Agent`` implements.
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
from .alerts import AlertTooLarge, Origin, encode_alert, encode_shadow, encode_summary, message_id
from .config import AgentConfig, config_hash, preflight, resolve, resolve_files, resolve_local
from .control.commands import Commands
from .control.store import ModelStore
from .health import Health, ProcessStats, clock_synced, heartbeat, write_health_file
from .outbox import ALERT, SUMMARY, Outbox, OutboxError
from .payloads import PayloadError, decode_audio, decode_camera, decode_detector
from .shadow import Shadows
from .sources import Message, SourceContext, create_source
from .sources.fairqueue import FairQueue
from .sources.slots import SensorSlots
from .tasks import Detection, LevelReport
from .uplink import Uplink

log = logging.getLogger("roadside.agent")
QUEUE_MAX = 2000
QUEUE_MAX_BYTES = 32 << 20
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
        # a signed bundle's check, run again before a reload reads its config (agent.control.reload)
        self.verify_source = verify_source
        self.rcfg = resolve_files(cfg, config_path)  # secret and key paths made absolute
        preflight(self.rcfg, str(config_path or "config"))
        dev = cfg.device
        self.state_dir = resolve(dev.state_dir, config_path)
        self.cache_dir = self.state_dir / "engines"
        self.health = Health(cfg.health.log_every_s)
        self.process_stats = ProcessStats()
        self.installed = ModelStore.for_config(self.rcfg, self.state_dir)  # reads the trusted keys, once
        self.taskset = taskset.build(self.rcfg, config_path, self.cache_dir, self.health, self.installed.candidates)
        self.outbox = Outbox(resolve_local(cfg.outbox.path, config_path) if cfg.outbox.path else
                             self.state_dir / "outbox.sqlite", cfg.outbox.max_bytes, cfg.outbox.hard_cap_bytes)
        self.origin = Origin(dev.id, self.outbox.next_boot(), config_hash(cfg))
        self.synced = self._time_synced()
        state = {"boot": self.origin.boot, "agent": __version__, "ch": self.origin.config_hash,
                 "models": self.taskset.models}
        if dev.location is not None:  # 2 numbers, rounded to ~1 m: keeps the state message small
            state["loc"] = {"lat": round(dev.location.lat, 5), "lon": round(dev.location.lon, 5)}
        self.commands = Commands(self)
        self.uplink = Uplink(self.rcfg.uplink, dev.site, dev.id, self.outbox, state, self.origin.boot,
                             on_command=self.commands.submit)
        self.commands.publish = self.uplink.publish_ack
        # candidate models beside the active ones (cmd/shadow): fed every timed window by the health tap
        self.shadows = Shadows(lambda name: self.taskset.named.get(name), self.store_shadow,
                               lambda: self.uplink.update_state(shadow=self.shadows.state() or None))
        self.health.tap = self.shadows.observe
        self.slots = SensorSlots(dev)  # which sensors keep state; listed ones always (agent.sources.slots)
        self._sensors = self.slots.held  # kind -> sensors with state (bounded: device.max_sensors)
        self.queue = FairQueue(max([getattr(s, "queue_max", QUEUE_MAX) for s in cfg.sources]),
                               max([getattr(s, "queue_max_bytes", QUEUE_MAX_BYTES) for s in cfg.sources]),
                               self._lane, lambda m: self.health.drop("queue_full", f"{m.kind}/{m.sensor}"))
        ctx = SourceContext(dev.id, cfg.audio, self.health, self.queue,
                            lambda: frozenset(k for k, ts in self.taskset.by_input.items() if ts), dev.sensors)
        self.sources = [create_source(s, ctx) for s in self.rcfg.sources]
        self._stop = threading.Event()
        self._hup = threading.Event()
        self.restart_with: AgentConfig | None = None  # set by a reload that needs the connections remade
        self.next_beat = time.monotonic()  # the run loop's heartbeat timer; a reload reschedules it

    @property
    def tasks(self) -> dict[str, list]:
        """Tasks by the input they consume (audio, camera, detector)."""
        return self.taskset.by_input

    @property
    def config_hash(self) -> str:
        """The running config's hash (ControlHost: every command ack carries it)."""
        return self.origin.config_hash

    @property
    def health_file(self) -> Path:
        f = self.cfg.health.file
        return resolve_local(f, self.config_path) if f is not None else self.state_dir / "health.json"

    def _time_synced(self) -> bool:
        mode = self.cfg.device.time_quality
        return clock_synced() if mode == "auto" else mode == "synced"

    # ---------------------------------------------------------------------------- input

    def _lane(self, msg: Message) -> tuple[str, str | None]:
        """A queue lane per sensor holding a slot; every other sender of a kind shares one (agent.sources.fairqueue)."""
        return (msg.kind, msg.sensor if self.slots.holds(msg.kind, msg.sensor) else None)

    def decode(self, msg: Message, tasks: list = ()):
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
            sizes = [t.image_size for t in tasks if getattr(t, "image_size", None)]
            need = (max(h for h, _ in sizes), max(w for _, w in sizes)) if sizes else None
            return decode_camera(msg.payload, msg.sensor, msg.received_ms, need)
        reading = decode_detector(msg.payload, msg.sensor)
        _check_time(reading.ts_ms, "ts")
        return reading

    def process(self, msg: Message) -> int:
        """One sensor message through its tasks; returns the number of messages stored. Never raises:
        whatever a message holds, it is accepted or counted under one reason (docs/mqtt.md 1.4)."""
        tasks = self.taskset.by_input.get(msg.kind, [])  # read once: a swap never splits a message
        where = f"{msg.kind}/{msg.sensor}"
        if not tasks:
            self.health.drop("no_task", f"{where}: no task consumes {msg.kind}")
            return 0
        refused = self.slots.admit(msg.kind, msg.sensor)  # before decoding: a refused sensor costs nothing
        if refused is not None:
            self.health.drop(refused, f"{where}: device.sensors / max_sensors ({self.cfg.device.max_sensors})")
            return 0
        try:
            reading = self.decode(msg, tasks)
            evicted = self.slots.claim(msg.kind, msg.sensor)
        except PayloadError as e:
            self.health.drop(e.reason, f"{where}: {e}")
            return 0
        except Exception as e:  # a decoder bug or hostile input (RecursionError, MemoryError...): never fatal
            self.health.drop("decode_error", f"{where}: {type(e).__name__}: {str(e)[:200]}")
            return 0
        for sensor in evicted:  # an idle unlisted sensor gave its slot away: its state goes with it
            for task in tasks:
                forget = getattr(task, "forget", None)
                if forget is not None:
                    forget(sensor)
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

    def _process_safely(self, msg: Message) -> None:
        """Defence in depth for the run loop: ``process`` counts every input error itself, so what lands
        here is a bug, counted as a task error; no sensor message may end the loop (issue 18)."""
        try:
            self.process(msg)
        except Exception as e:
            self.health.drop("task_error", f"{msg.kind}/{msg.sensor}: {type(e).__name__}: {str(e)[:200]}")

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

    def store_shadow(self, report: dict) -> None:
        """A shadow report into the outbox (topic ``shadow``), evicted like a summary (docs/rollouts.md)."""
        o = self.origin
        try:
            self.outbox.put(SUMMARY, "shadow", lambda seq: encode_shadow(o, seq, ts_ms=int(time.time() * 1000),
                                                                        report=report))
            self.health.count("shadow_reports")
        except AlertTooLarge as e:
            self.health.drop("alert_too_large", str(e))
            return
        except (sqlite3.Error, OutboxError, OSError) as e:
            self.health.drop("outbox_error", f"{type(e).__name__}: {e}")
            return
        self.uplink.notify()

    # ------------------------------------------------- commands (agent.control.host.ControlHost)

    def swap(self, tasks: "taskset.TaskSet") -> None:
        """The new task set, in one assignment; the city hears about it in the retained state message."""
        self.taskset = tasks
        self.uplink.update_state(models=tasks.models)

    def apply_config(self, cfg: AgentConfig, rcfg: AgentConfig, tasks: "taskset.TaskSet", store: ModelStore) -> None:
        """A reload that needs no reconnection (agent.control.reload decided): new tasks, limits and config hash."""
        self.cfg, self.rcfg, self.installed = cfg, rcfg, store
        self.health.log_every_s = cfg.health.log_every_s
        self.origin = replace(self.origin, config_hash=config_hash(cfg))
        self.taskset = tasks
        self.slots.configure(cfg.device)
        for source in self.sources:  # a task added by the reload: subscribe its input
            getattr(source, "follow", lambda: None)()
        self.uplink.update_state(models=tasks.models, ch=self.origin.config_hash)
        self.next_beat = time.monotonic()  # timers follow the new periods now, not after the old period ran out
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
        self.shadows.tick()  # a shadow whose minutes ran out ends even if no window came
        shadow = self.shadows.health()
        if shadow:
            extra["shadow"] = shadow
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
        self.next_beat, hups = time.monotonic(), 0  # first heartbeat (and health file) at once
        try:
            while not self._stop.is_set():
                try:
                    msg = self.queue.get(timeout=0.2)
                except queue.Empty:
                    msg = None
                if msg is not None:
                    self._process_safely(msg)
                if self._hup.is_set():
                    self._hup.clear()
                    hups += 1
                    self.commands.submit("reload", json.dumps({"id": f"sighup-{self.origin.boot}-{hups}"}).encode())
                if time.monotonic() >= self.next_beat:
                    self.heartbeat()
                    self.next_beat = time.monotonic() + self.cfg.uplink.heartbeat_s
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
                self._process_safely(self.queue.get_nowait())
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
