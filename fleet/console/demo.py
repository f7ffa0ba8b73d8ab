"""``roadside fleet demo``: the city stack, three real agents on real recordings, 200 simulated
poles and the console, on one machine, until the duration ends or Ctrl-C.

Every piece is a child process in its own process group (``fleet.servers.procs.Proc``), so a
Ctrl-C reaches only this process, which stops them by PID in order: replays, simulator,
agents, the poles' brokers, the console, then the stack (workers, NATS, PostgreSQL).

The three agents are ``roadside agent`` with ``firmware_configs/demo.yaml`` (ports, ids,
credentials and a location filled in), each with its own mosquitto as the pole's sensor broker
and its own ``roadside replay``. Pole 1 hears, sees and counts (noise, vehicles, congestion on
a held-out Los-loop detector, as ``roadside demo``); poles 2 and 3 hear other UrbanSound8K
recordings (fold 2, held out from training), in another order.
"""

from __future__ import annotations

import getpass
import secrets
import sys
import threading
import time
from pathlib import Path

import yaml

from roadside_demo.run import MOSQUITTO, task_input
from roadside_demo.scene import AUDIO_ORDER, NOISE_LABELS, SEGMENT_S, _clips, _recordings, build_scene, find_data

from ..servers.procs import Proc, free_port, pids_alive, wait_port

REPO = Path(__file__).resolve().parents[2]
CENTRE = (51.5072, -0.1276)  # the simulator's centre: the real poles stand among the simulated ones
SITE = "demo-street"


def pole_audio(root: Path, seconds: float, work: Path, k: int) -> Path | None:
    """Recordings for pole ``k``: classes in an order rotated by 3k, the (k+round)-th recording of each."""
    recs = _recordings(_clips(root))
    if not recs:
        return None
    out = work / "audio"
    out.mkdir(parents=True, exist_ok=True)
    order = AUDIO_ORDER[3 * k % len(AUDIO_ORDER):] + AUDIO_ORDER[:3 * k % len(AUDIO_ORDER)]
    t, n, round_ = 0.0, 0, 0
    while t < seconds and round_ < 50:
        for name in order:
            pool = recs.get(NOISE_LABELS.index(name), [])
            if not pool:
                continue
            seg = 0.0
            for clip in pool[(k + round_) % len(pool)]:
                if seg >= SEGMENT_S:
                    break
                (out / f"{n:04d}-{clip.name}").symlink_to(clip.resolve())
                n, seg, t = n + 1, seg + 4.0, t + 4.0  # UrbanSound8K slices are at most 4 s
        round_ += 1
    return out


class DemoPole:
    """One real pole: its sensor broker (mosquitto), ``roadside agent`` and ``roadside replay``."""

    def __init__(self, k: int, folder: Path, stack, root: Path | None, seconds: float):
        self.k, self.folder = k, folder
        self.device = f"demo-pole-{k + 1}"
        folder.mkdir(parents=True, exist_ok=True)
        password = stack.add_devices({self.device: SITE})[self.device]
        (folder / "password").write_text(password + "\n")
        (folder / "password").chmod(0o600)
        self.local_port = free_port()
        (folder / "mosquitto.conf").write_text(
            f"listener {self.local_port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            f"log_dest file {folder}/mosquitto.log\nuser {getpass.getuser()}\n")
        self.config = self._config(stack.mqtt_ports[k % len(stack.mqtt_ports)])
        tasks = yaml.safe_load(self.config.read_text())["tasks"]
        self.replay_args = self._scene(root, seconds, set(tasks))
        self.procs: list[Proc] = []

    def _config(self, city_port: int) -> Path:
        from agent.config import load_config
        from roadside_demo.run import demo_config

        lat, lon = CENTRE[0] + 0.004 * (self.k - 1), CENTRE[1] + 0.006 * (1 - self.k)
        path, raw, _ = demo_config(self.folder, self.local_port, city_port, {
            "device.id": self.device, "device.site": SITE, "device.location": {"lat": lat, "lon": lon},
            "uplink.protocol": "3.1.1", "uplink.broker.username": self.device,
            "uplink.broker.password_file": str(self.folder / "password")})
        if self.k > 0:  # poles 2 and 3 only listen
            raw["tasks"] = {n: t for n, t in raw["tasks"].items() if n == "noise"}
            path.write_text(yaml.safe_dump(raw, sort_keys=False))
            load_config(path)
        return path

    def _scene(self, root: Path | None, seconds: float, tasks: set[str]) -> list[str]:
        if self.k == 0:
            inputs = {task_input(t) for t in tasks} | {"audio"}
            scene = build_scene(root, seconds, self.folder, inputs)
            args = ["--audio", str(scene.audio)] if scene.audio else []
            args += ["--images", str(scene.images)] if scene.images else []
            return args + (["--detectors", str(scene.detectors)] if scene.detectors else [])
        audio = pole_audio(root, seconds, self.folder, self.k) if root else None
        if audio is None:  # no data: the synthetic street of `roadside demo`
            audio = build_scene(None, seconds, self.folder, {"audio"}).audio
        return ["--audio", str(audio)]

    def start_agent(self) -> None:
        self.procs.append(Proc(f"mosquitto-{self.device}", [MOSQUITTO, "-c", str(self.folder / "mosquitto.conf")],
                               self.folder / "mosquitto.out"))
        wait_port(self.local_port, 10, self.procs[-1], "mosquitto")
        self.procs.append(Proc(f"agent-{self.device}", [sys.executable, "-m", "agent.cli", "agent", "--config",
                                                        str(self.config)], self.folder / "agent.log", cwd=REPO))

    def start_replay(self) -> None:
        self.procs.append(Proc(f"replay-{self.device}", [sys.executable, "-m", "agent.cli", "replay", "--broker",
                                                         f"127.0.0.1:{self.local_port}", "--device", self.device,
                                                         *self.replay_args], self.folder / "replay.log", cwd=REPO))

    def stop(self) -> None:
        for p in reversed(self.procs):  # replay, agent (its clean stop: state offline), mosquitto
            p.stop(timeout=20)


def db_figures(db_url: str) -> dict:
    """What the status line says: poles online, alerts and summaries stored."""
    import asyncpg

    from ..stack import run_async

    async def q():
        conn = await asyncpg.connect(db_url)
        try:
            return dict(await conn.fetchrow(
                "SELECT (SELECT count(*) FROM devices WHERE online) AS online, (SELECT count(*) FROM devices) AS devices,"
                " (SELECT count(*) FROM alerts) AS alerts, (SELECT count(*) FROM level_summaries) AS summaries,"
                " (SELECT count(*) FROM devices WHERE device LIKE 'demo-pole-%' AND online) AS real_online"))
        finally:
            await conn.close()
    return run_async(q())


def run(duration: float, folder: Path | None, port: int, poles: int, rate: float, data: str | None,
        stop: threading.Event, say=print) -> int:
    from ..stack import Stack, run_async
    from . import auth

    root = find_data(data)
    if folder is None:
        import tempfile
        folder = Path(tempfile.mkdtemp(prefix="roadside-fleet-demo-", dir="/tmp"))
        folder.chmod(0o711)  # postgres runs as nobody when started by root, and must reach its data
    say(f"roadside fleet demo: {duration:.0f} s in {folder}; data: {root or 'none found (synthetic street)'}")
    stack = Stack(folder / "city", nodes=3, workers=2)
    procs: list[Proc] = []
    demo_poles: list[DemoPole] = []
    try:
        stack.start()
        say(f"  city stack: NATS MQTT on {', '.join(map(str, stack.mqtt_ports))}, PostgreSQL on {stack.pg.port}, "
            f"{len(stack.workers)} ingest workers")
        demo_poles = [DemoPole(k, folder / f"pole{k + 1}", stack, root, duration) for k in range(3)]
        password = secrets.token_urlsafe(9)
        run_async(_add_user(stack.db_url, "operator", password, auth))
        port = port or free_port()
        procs.append(Proc("console", [sys.executable, "-m", "agent.cli", "fleet", "serve", "--dir", str(folder / "city"),
                                      "--port", str(port)], folder / "console.log", cwd=REPO))  # no password in argv
        wait_port(port, 30, procs[-1], "console")
        for p in demo_poles:
            p.start_agent()
        procs.append(Proc("simulate", [sys.executable, "-m", "agent.cli", "fleet", "simulate", "--dir",
                                       str(folder / "city"), "--devices", str(poles), "--rate", str(rate),
                                       "--seconds", str(duration + 120), "--sites", "20"], folder / "simulate.log",
                          cwd=REPO))  # outlives the demo: stopped by PID with the rest
        _wait_agents(stack.db_url, stop, say)
        for p in demo_poles:
            p.start_replay()
        say(f"\n  console: http://127.0.0.1:{port}/   log in as: operator / {password}")
        say(f"  (3 real agents replaying recordings, {poles} simulated poles; Ctrl-C stops everything)\n")
        t0 = time.monotonic()
        while not stop.wait(10) and time.monotonic() - t0 < duration:
            f = db_figures(stack.db_url)
            say(f"  {time.monotonic() - t0:5.0f} s: {f['online']}/{f['devices']} poles online "
                f"({f['real_online']}/3 real), {f['alerts']} alerts and {f['summaries']} level summaries stored")
        return 130 if stop.is_set() else 0  # 130: interrupted, as `roadside demo`
    finally:
        say("stopping (by PID): replays, simulator, agents, console, city stack ...")
        all_pids = [x.pid for p in demo_poles for x in p.procs] + [x.pid for x in procs]
        for p in reversed(procs):
            p.stop(timeout=30)
        for p in demo_poles:
            p.stop()
        stack.stop()
        left = pids_alive(all_pids + stack.pids())
        say("stopped" + (f"; STILL RUNNING: {left}" if left else ", nothing left running") + f" (logs in {folder})")


async def _add_user(db_url: str, name: str, password: str, auth) -> None:
    from .. import db

    conn = await db.connect(db_url)
    try:
        await db.migrate(conn)
        await auth.add_user(conn, name, password, "operator")
    finally:
        await conn.close()


def _wait_agents(db_url: str, stop: threading.Event, say, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout and not stop.is_set():
        if db_figures(db_url)["real_online"] == 3:
            say(f"  the 3 agents are online ({time.monotonic() - t0:.0f} s)")
            return
        stop.wait(1.0)
    if not stop.is_set():
        say(f"  warning: not all 3 agents online after {timeout:.0f} s; see pole*/agent.log")
