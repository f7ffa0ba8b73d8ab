"""``roadside demo``: the whole system on one machine, a street scene in, alerts out.

Two MQTT brokers (the pole's and the city's: mosquitto when installed, else the in-process
``roadside_demo.broker``), ``roadside agent`` as a child process with ``firmware_configs/demo.yaml``
and the shipped models (a task is left out when its model is not shipped), and the scene
(``roadside_demo.scene``) replayed to the pole's broker in real time, as the sensors would
send it (``agent.sources.replay``). A subscriber on the city broker prints alerts and level
summaries as they arrive; at the end, a summary (``roadside_demo.report``).

Children are stopped by PID, in order (agent, then brokers), when the scene ends, on Ctrl-C
and on SIGTERM; a second Ctrl-C during that is ignored so nothing is left half-stopped.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import yaml

from fleet.servers.procs import free_port, wait_port

from .broker import MqttBroker
from .report import DemoResult, alert_line, format_summary, summarise
from .scene import REPO, Scene, build_scene, find_data

DEFAULT_DURATION = 45.0
CONFIG = REPO / "firmware_configs" / "demo.yaml"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
Say = Callable[[str], None]


# ---------------------------------------------------------------------------- brokers

class Mosquitto:
    """mosquitto on 127.0.0.1 as a child process (no persistence), stopped by its PID."""

    name = "mosquitto"

    def __init__(self, folder: Path, timeout: float = 10.0):
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = folder / "mosquitto.log"
        conf = folder / "mosquitto.conf"
        # As root, mosquitto would switch to user "mosquitto", which cannot write the log here.
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                        f"log_dest file {self.log}\nuser {getpass.getuser()}\n")
        self.popen = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        self.pid = self.popen.pid
        try:
            wait_port(self.port, timeout, self, "mosquitto")
        except RuntimeError:
            self.stop()
            raise

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(10)


class InProcessBroker(MqttBroker):
    name = "in-process MQTT 3.1.1 broker"
    pid = None


def start_broker(kind: str, folder: Path):
    if kind == "mosquitto" or (kind == "auto" and Path(MOSQUITTO).is_file()):
        if not Path(MOSQUITTO).is_file():
            raise FileNotFoundError(f"--broker mosquitto: mosquitto not found (PATH, {MOSQUITTO})")
        return Mosquitto(folder)
    return InProcessBroker().start()


# --------------------------------------------------------------------- city subscriber

class Upstream:
    """Subscribes to everything the agent sends the city; prints alerts and summaries as they arrive."""

    def __init__(self, port: int, say: Say | None, prefix: str = "roadside/v1/#"):
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[tuple[float, str, bytes]] = []
        self.t0 = time.time()
        self.say = say
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"demo-city-{os.getpid()}",
                                  protocol=paho.MQTTv311)
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(prefix, qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        now = time.time()
        with self._lock:
            self.messages.append((now, msg.topic, msg.payload))
        line = alert_line(now, self.t0, msg.topic, msg.payload) if self.say else None
        if line:
            self.say(line)

    def snapshot(self) -> list[tuple[float, str, bytes]]:
        with self._lock:
            return list(self.messages)

    def payloads(self, suffix: str) -> list[tuple[float, dict]]:
        out = []
        for t, topic, p in self.snapshot():
            if topic.endswith(suffix) and p:
                try:
                    out.append((t, json.loads(p)))
                except ValueError:
                    continue
        return out

    def wait(self, predicate: Callable[[], object], timeout: float, alive: Callable[[], bool] = lambda: True):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and alive():
            got = predicate()
            if got:
                return got
            time.sleep(0.1)
        return predicate()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# ----------------------------------------------------------------------------- agent

def _die_with_parent() -> None:
    """In the child, before exec (Linux): SIGTERM when the demo dies, even by SIGKILL, which it cannot
    catch to stop its children itself; elsewhere a no-op."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class AgentChild:
    """``roadside agent --config`` as a child process, its log in a file, stopped by PID."""

    def __init__(self, config: Path, log: Path):
        self.log = log
        self._out = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "agent", "--config", str(config)],
                                     cwd=REPO, stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.STDOUT,
                                     preexec_fn=_die_with_parent)
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stats(self) -> dict:
        """Peak RSS and CPU seconds so far (Linux /proc), for the summary."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
            hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, StopIteration, ValueError, IndexError):
            return {"pid": self.pid}
        return {"pid": self.pid, "rss_peak_mb": hwm / 1024, "cpu_s": cpu}

    def stop(self, timeout: float = 20.0) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)  # the agent's clean stop: state "offline", queue drained
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._out.close()

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


# ---------------------------------------------------------------------------- config

def demo_config(work: Path, sensors_port: int, city_port: int, overrides: dict | None = None
                ) -> tuple[Path, dict, dict[str, str]]:
    """The demo config with ports, state folder and shipped models filled in; validated.

    Returns (path, the config as a dict, {task left out: why}).
    """
    from agent.config import load_config

    if not CONFIG.is_file():
        raise FileNotFoundError(f"{CONFIG} not found: roadside demo runs from a clone of the repository")
    raw = yaml.safe_load(CONFIG.read_text())
    skipped = {}
    for name, task in list(raw["tasks"].items()):
        model = REPO / task["model"]
        manifest = model.parent / "manifest.json"
        if not model.is_file() or not manifest.is_file():
            skipped[name] = f"no shipped model at {task['model']}"
            del raw["tasks"][name]
            continue
        labels = json.loads(manifest.read_text()).get("labels", [])
        task["rule"]["classes"] = {c: r for c, r in task["rule"]["classes"].items() if c in labels}
        if not task["rule"]["classes"]:
            skipped[name] = f"none of the demo's alerting classes is among the model's labels {labels}"
            del raw["tasks"][name]
            continue
        task["model"] = str(model)
    raw["sources"][0]["broker"]["port"] = sensors_port
    raw["uplink"]["broker"]["port"] = city_port
    raw["device"]["state_dir"] = str(work / "state")
    for dotted, value in (overrides or {}).items():
        node = raw
        *head, last = dotted.split(".")
        for k in head:
            node = node[k]
        node[last] = value
    path = work / "agent.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    load_config(path)  # refused whole, naming the key, before anything starts
    return path, raw, skipped


def task_input(name: str) -> str:
    """The sensor kind (audio, camera, detector) a task reads, as the task registry says."""
    from agent.tasks import registry

    return registry.get(name).consumes


def config_inputs(raw: dict) -> set[str]:
    """The sensor kinds a config (as a dict) reads: its ``tasks:`` and the section tasks it has (``level:``)."""
    from agent.tasks import registry

    sections = [spec.name for spec in registry.specs().values() if spec.section and raw.get(spec.section)]
    return {task_input(name) for name in [*raw["tasks"], *sections]}


# ------------------------------------------------------------------------------- run

def _describe(raw: dict, skipped: dict[str, str], scene: Scene, root: Path | None, duration: float) -> list[str]:
    lines = [f"roadside demo: {duration:.0f} s of a street scene, replayed over MQTT as a roadside unit's sensors "
             f"would send it"]
    if root is None:
        lines.append("  no data folder found (--data, $ROADSIDE_DATA, ../shared/data): this scene is SYNTHETIC")
    elif scene.synthetic:
        lines.append(f"  data: {root}; SYNTHETIC streams (not in the data folder): {', '.join(scene.synthetic)}")
    else:
        lines.append(f"  data: {root} (real recordings)")
    lines += ["  scene:"] + [f"    {s}" for s in scene.story]
    tasks = [f"{n} ({Path(t['model']).relative_to(REPO) if Path(t['model']).is_relative_to(REPO) else t['model']}; "
             f"alerts on {', '.join(t['rule']['classes'])})" for n, t in raw["tasks"].items()]
    lines.append("  tasks: " + "; ".join(tasks + (["sound level meter"] if raw.get("level") else [])))
    for name, why in skipped.items():
        lines.append(f"  {name}: left out ({why}); its {task_input(name)} stream is not played")
    return lines


def run_scene(duration: float, data: str | None = None, broker: str = "auto", say: Say | None = print,
              overrides: dict | None = None) -> tuple[DemoResult, dict]:
    """Brokers, agent, replay, subscriber; returns what was seen upstream and the config used."""
    from agent.sources.replay import replay

    if not duration > 0:
        raise ValueError(f"--duration must be positive, got {duration}")
    say = say or (lambda line: None)
    root = find_data(data)  # a wrong --data is refused before anything is made
    work = Path(tempfile.mkdtemp(prefix="roadside-demo-"))
    stops: list[Callable[[], None]] = []
    result = DemoResult(duration, time.time(), {}, [])
    ok = False
    try:
        local = start_broker(broker, work / "local")
        stops.append(local.stop)
        city = start_broker(broker, work / "city")
        stops.append(city.stop)
        path, raw, skipped = demo_config(work, local.port, city.port, overrides)
        scene = build_scene(root, duration, work, config_inputs(raw))
        result.scene, result.synthetic = scene.story, scene.synthetic
        for line in _describe(raw, skipped, scene, root, duration):
            say(line)
        upstream = Upstream(city.port, say)
        stops.append(upstream.close)
        agent = AgentChild(path, work / "agent.log")
        stops.append(agent.stop)
        pids = ", ".join(f"{p}" for p in (local.pid, city.pid) if p)
        say(f"  brokers: {local.name} on 127.0.0.1:{local.port} (the pole's) and :{city.port} (the city's)"
            + (f", pids {pids}" if pids else "") + f"; agent pid {agent.pid} (log {agent.log})")
        t = time.monotonic()
        state = upstream.wait(lambda: [p for _, p in upstream.payloads("/state") if p.get("online")], 120, agent.alive)
        if not state:
            say(f"the agent did not come online; last lines of {agent.log}:\n{agent.tail()}")
            raise RuntimeError("the agent did not come online")
        models = ", ".join(f"{n} on {m.get('backend')}" for n, m in state[-1].get("models", {}).items())
        say(f"agent online after {time.monotonic() - t:.1f} s ({models}); alerts as they arrive at the city broker "
            f"(Ctrl-C stops):")
        result.config = {"level_period_s": raw.get("level", {}).get("period_s"), "heartbeat_s":
                         raw["uplink"].get("heartbeat_s"), "calibration_db": raw.get("level", {}).get("calibration_db")}
        result.interrupted = _replay(replay, local, raw["device"]["id"], scene, duration, result, upstream)
        if not result.interrupted:
            _drain(upstream, result.started + result.seconds)
        result.agent = agent.stats()
        result.messages = upstream.snapshot()
        ok = True
        return result, raw
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if _main_thread() else None
        try:
            for stop in reversed(stops):
                stop()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        if ok or not (work / "agent.log").is_file():
            shutil.rmtree(work, ignore_errors=True)
        else:  # the agent ran and something failed: its log is worth reading
            say(f"(work folder kept: {work})")


def _replay(replay, local, device: str, scene: Scene, duration: float, result: DemoResult, upstream: Upstream) -> bool:
    """Play the scene for ``duration`` s on a thread; True if interrupted (Ctrl-C or SIGTERM)."""
    stop, done = threading.Event(), threading.Event()
    sent: dict = {}
    failed: list[BaseException] = []

    def play() -> None:  # a short timeout: after Ctrl-C the brokers may be gone, and nothing waits for them
        try:
            sent.update(replay(f"127.0.0.1:{local.port}", device, scene.audio, scene.images, scene.detectors,
                               rate=1.0, stop=stop, timeout=3.0))
        except Exception as e:
            failed.append(e)
        finally:
            done.set()

    worker = threading.Thread(target=play, name="demo-replay", daemon=True)
    result.started = upstream.t0 = time.time()
    worker.start()
    interrupted = False
    # Polled with sleep, not Thread.join: a Ctrl-C that interrupts join can leave the thread looking
    # finished while it still runs (CPython gh-89437), and its byte counts would be lost.
    try:  # the scene is ``duration`` long; the time limit only guards against a stuck broker
        while not done.is_set() and time.time() - result.started < duration + 5:
            time.sleep(0.1)
    except KeyboardInterrupt:
        interrupted = True
    stop.set()
    done.wait(10)
    result.seconds = min(duration, time.time() - result.started)
    result.sent = dict(sent)
    if failed and not interrupted:
        raise RuntimeError(f"the replay failed: {type(failed[0]).__name__}: {failed[0]}")
    return interrupted


def _drain(upstream: Upstream, after: float, timeout: float = 15.0) -> None:
    """Until a heartbeat sent after the replay shows nothing queued and nothing waiting in the outbox."""
    def drained():
        beats = [p for t, p in upstream.payloads("/health") if t > after + 0.5]
        return beats and beats[-1].get("q") == 0 and sum(beats[-1].get("out", {}).get(k, 0)
                                                          for k in ("alerts", "summaries")) == 0

    upstream.wait(drained, timeout)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def run_demo(duration: float = DEFAULT_DURATION, data: str | None = None, broker: str = "auto") -> int:
    """The ``roadside demo`` command: 0 when the scene played to its end, 130 after Ctrl-C / SIGTERM."""
    previous = None
    if _main_thread():  # SIGTERM (a supervisor, a closed terminal) stops the demo like Ctrl-C
        def on_term(*_):
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, on_term)
    try:
        result, raw = run_scene(duration, data, broker, say=_say)
    except KeyboardInterrupt:  # during start-up: the children were stopped by run_scene
        _say("roadside demo: interrupted")
        return 130
    except RuntimeError as e:  # a broker or the agent would not start; what was running is stopped
        print(f"roadside demo: error: {e}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    _say("")
    _say(format_summary(summarise(result), result.config))
    return 130 if result.interrupted else 0


_print_lock = threading.Lock()


def _say(line: str) -> None:
    with _print_lock:
        print(line, flush=True)
