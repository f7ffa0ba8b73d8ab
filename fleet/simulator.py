"""Simulated poles: many MQTT connections in one asyncio process, speaking exactly what the agent speaks.

Each pole has its own connection (client id ``roadside-<device>-up``, MQTT 3.1.1, its own user),
a boot counter, a last will (``state`` offline, retained) and a retained birth message, and
publishes alerts, level summaries (QoS 1) and health (QoS 0) built by the agent's own encoders
(``agent.alerts``), so the simulator cannot drift from the wire format. Like the agent's outbox,
a message stays pending until its PUBACK and is sent again, marked ``"r":1``, after a reconnect.

Seeded: the schedule (exponential gaps at ``rate`` alerts/s over the whole fleet), classes,
confidences and positions come from ``random.Random(seed)``. ``first_sent`` keeps when each
alert id was first handed to the network, for the bench's publish-to-commit latency.
One asyncio connection per pole (``fleet.mqttlite``: why not paho there is said in it).
With ``commands`` a pole also subscribes to its ``cmd/+`` (QoS 1) and answers the rollout
protocol (``fleet.rollout.simpole``: shadow, promote, abort, model; a ``Behaviour`` per candidate).
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.alerts import ModelInfo, Origin, encode_alert, encode_summary, mark_replayed

from .counters import counters
from .mqttlite import Client, MqttLiteError

CLASSES = ["siren", "car_horn", "dog_bark", "jackhammer", "drilling", "gun_shot"]
MODEL = ModelInfo("noise", "1", "0123456789abcdef" * 4)
CONFIG_HASH = "fedcba9876543210"


@dataclass
class SimConfig:
    devices: dict[str, tuple[str, str]]  # device -> (site, password)
    ports: list[int]                     # MQTT ports; poles are spread over them
    host: str = "127.0.0.1"
    rate: float = 100.0                  # alerts per second, whole fleet
    seed: int = 1
    boot: int = 1
    summary_every_s: float = 60.0
    health_every_s: float = 30.0
    max_inflight: int = 20
    ca_file: Path | None = None          # TLS with this CA pinned (as the agent does)
    centre: tuple[float, float] = (51.5072, -0.1276)
    commands: bool = False               # subscribe to cmd/+ and answer the rollout protocol
    command_qos: int = 1                 # of that subscription: 1 as the agent (a JetStream consumer per pole
                                         # in NATS); 0 spares a small broker that cost (docs/rollouts.md)
    trusted_keys: list = field(default_factory=list)   # Ed25519 public keys (updates.trusted_keys)
    behaviours: dict = field(default_factory=dict)     # bundle or model sha256 -> simpole.Behaviour
    release: int = 1                     # release of the model every pole starts with
    model: dict | None = None            # the noise model every pole starts with: {sha256, version} (else MODEL)


@dataclass
class Stats(counters("connects connect_errors drops resent summaries health")):
    first_sent: dict[str, float] = field(default_factory=dict)  # alert id -> time.time() of the first send
    acked: set = field(default_factory=set)

    def connected_now(self, poles) -> int:
        return sum(p.connected for p in poles)


class Pole:
    def __init__(self, sim: "Simulator", index: int, device: str, site: str, password: str, port: int):
        self.sim, self.device, self.site, self.password, self.port = sim, device, site, password, port
        self.rng = random.Random(sim.cfg.seed * 1_000_003 + index)
        self.origin = Origin(device, sim.cfg.boot, CONFIG_HASH)
        self.base = f"roadside/v1/{site}/{device}"
        self.seq = 0
        self.outbox: dict[int, tuple[str, bytes, bool]] = {}  # seq -> (topic, payload, is_alert)
        self.queue: asyncio.Queue[int] = asyncio.Queue()
        self.connected = False
        self.client = None
        self.away_until = 0.0
        self.models = {"noise": {"name": MODEL.name, "version": MODEL.version, "sha256": MODEL.sha256,
                                 "backend": "onnxruntime", "src": "config", "release": sim.cfg.release,
                                 **(sim.cfg.model or {})}}
        self.rollout = None
        if sim.cfg.commands:
            from .rollout.simpole import PoleRollout
            self.rollout = PoleRollout(self, sim)
        lat0, lon0 = sim.cfg.centre
        self.loc = {"lat": round(lat0 + self.rng.uniform(-0.05, 0.05), 5), "lon": round(lon0 + self.rng.uniform(-0.08, 0.08), 5)}

    # ------------------------------------------------------------------ producing (the "agent")

    def store(self, topic: str, payload: bytes, alert: bool) -> None:
        self.outbox[self.seq] = (topic, payload, alert)
        self.queue.put_nowait(self.seq)

    def make_alert(self) -> None:
        self.seq += 1
        now = int(time.time() * 1000)
        payload = encode_alert(self.origin, self.seq, ts_ms=now, synced=True, kind="noise", sensor="mic0",
                               cls=self.rng.choice(CLASSES), confidence=round(self.rng.uniform(0.5, 1.0), 3),
                               window_ms=4000, metrics={}, model=MODEL)
        self.store(f"{self.base}/alert/noise", payload, True)

    def make_summary(self) -> None:
        self.seq += 1
        laeq = self.rng.uniform(50, 75)
        payload = encode_summary(self.origin, self.seq, ts_ms=int(time.time() * 1000), synced=True, sensor="mic0",
                                 seconds=self.sim.cfg.summary_every_s, laeq=laeq, lafmax=laeq + self.rng.uniform(5, 20),
                                 l10=laeq + 3, l90=laeq - 8, limit_db=70.0, period="day")
        self.store(f"{self.base}/summary", payload, False)
        self.sim.stats.summaries += 1

    def birth(self) -> bytes:
        return json.dumps({"v": 1, "online": True, "ts": int(time.time() * 1000), "boot": self.origin.boot,
                           "agent": "sim", "ch": CONFIG_HASH, "loc": self.loc, "proto": "3.1.1",
                           "models": self.models},
                          separators=(",", ":")).encode()

    def death(self) -> bytes:
        return json.dumps({"v": 1, "online": False, "boot": self.origin.boot}, separators=(",", ":")).encode()

    # ------------------------------------------------------------------ sending (the "uplink")

    def _tls(self) -> ssl.SSLContext | None:
        if self.sim.cfg.ca_file is None:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # the CA pinned, host name checked (as agent.mqtt)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_verify_locations(cafile=str(self.sim.cfg.ca_file))
        return ctx

    async def run(self, stop: asyncio.Event) -> None:
        attempt = 0
        ports = self.sim.cfg.ports
        while not stop.is_set():
            # After a failure the next node is tried: what a load balancer in front of the cluster does.
            port = ports[(ports.index(self.port) + attempt) % len(ports)]
            client = Client(self.sim.cfg.host, port, f"roadside-{self.device}-up", username=self.device,
                            password=self.password, will=(f"{self.base}/state", self.death(), 1, True),
                            keepalive=30, ssl_context=self._tls())
            try:
                await client.connect()
                self.client, self.connected, attempt = client, True, 0
                self.sim.stats.connects += 1
                await client.publish(f"{self.base}/state", self.birth(), 1, True)
                if self.rollout is not None:
                    client.on_message = self.rollout.on_message
                    # NATS makes a JetStream consumer per QoS 1 subscription: 1,000 at once take a while on a
                    # busy machine, and giving up (reconnecting) would only make it do the work again.
                    await client.subscribe(f"{self.base}/cmd/+", self.sim.cfg.command_qos, timeout=120.0)
                await self._pump(client, stop)
                if not client.closed.is_set():  # a clean stop says so itself; the will is for vanishing
                    await client.publish(f"{self.base}/state", self.death(), 1, True)
                    await client.disconnect()
            except (OSError, asyncio.TimeoutError, MqttLiteError):
                self.sim.stats.connect_errors += 1
                client.abort()
            finally:
                self.client, self.connected = None, False
            if not stop.is_set():  # full jitter, as the agent: poles do not reconnect in lock-step
                away = max(0.0, self.away_until - time.monotonic())  # a dropped pole stays away a while
                await asyncio.sleep(away + self.rng.uniform(0, min(5.0, 0.2 * 2 ** min(attempt, 5))))
                attempt += 1

    async def _pump(self, client: Client, stop: asyncio.Event) -> None:
        # Everything still pending from before this connection is backlog: sent again, marked replayed.
        backlog = set(self.outbox)
        self.queue = asyncio.Queue()
        for s in sorted(self.outbox):
            self.queue.put_nowait(s)
        room = asyncio.Event()
        inflight = 0
        stopper = asyncio.ensure_future(stop.wait())
        closer = asyncio.ensure_future(client.closed.wait())

        def done(seq: int, alert_id: str | None, fut: asyncio.Future) -> None:
            nonlocal inflight
            inflight -= 1
            room.set()
            if fut.exception() is None:  # else the connection went: the row stays in the outbox
                self.outbox.pop(seq, None)
                if alert_id:
                    self.sim.stats.acked.add(alert_id)
        try:
            while not stop.is_set() and not client.closed.is_set():
                try:
                    seq = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    getter = asyncio.ensure_future(self.queue.get())
                    await asyncio.wait({getter, stopper, closer}, return_when=asyncio.FIRST_COMPLETED)
                    if not getter.done():
                        getter.cancel()
                        continue
                    seq = getter.result()
                if seq not in self.outbox:
                    continue
                topic, payload, alert = self.outbox[seq]
                if seq in backlog:
                    payload = mark_replayed(payload)
                    self.sim.stats.resent += 1
                alert_id = f"{self.origin.device}:{self.origin.boot}:{seq}" if alert else None
                if alert_id:
                    self.sim.stats.first_sent.setdefault(alert_id, time.time())
                while inflight >= self.sim.cfg.max_inflight and not client.closed.is_set():
                    room.clear()
                    await asyncio.wait({asyncio.ensure_future(room.wait()), closer}, return_when=asyncio.FIRST_COMPLETED)
                if client.closed.is_set():
                    break
                inflight += 1
                client.publish(topic, payload, 1).add_done_callback(functools.partial(done, seq, alert_id))
            deadline = time.monotonic() + 5
            while inflight and not client.closed.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            stopper.cancel()
            closer.cancel()

    async def health(self) -> None:
        c = self.client
        if c is None:
            return
        doc = {"v": 1, "ts": int(time.time() * 1000), "up_s": round(time.monotonic() - self.sim.t0, 1), "q": 0,
               "boot": self.origin.boot, "ch": CONFIG_HASH, "out": {"alerts": len(self.outbox)},
               "cpu": {"pct": round(self.rng.uniform(5, 30), 1)}, "rss_mb": round(self.rng.uniform(150, 250), 1)}
        try:
            c.publish(f"{self.base}/health", json.dumps(doc, separators=(",", ":")).encode(), 0)
            self.sim.stats.health += 1
        except MqttLiteError:
            pass

    def drop(self, away_s: float = 0.0) -> bool:
        """The network goes away under the pole for ``away_s`` (no DISCONNECT: the broker publishes its will)."""
        c = self.client
        if c is None:
            return False
        self.away_until = time.monotonic() + away_s
        c.abort()
        self.sim.stats.drops += 1
        return True


class Simulator:
    def __init__(self, cfg: SimConfig):
        self.cfg = cfg
        self.stats = Stats()
        self.t0 = time.monotonic()
        self.poles = [Pole(self, i, dev, site, pw, cfg.ports[i % len(cfg.ports)])
                      for i, (dev, (site, pw)) in enumerate(sorted(cfg.devices.items()))]
        self.rng = random.Random(cfg.seed)
        self.stop_event = asyncio.Event()
        self._paused: set[int] = set()
        if cfg.commands:
            from .rollout.simpole import BundleCache
            self.bundles = BundleCache(cfg.trusted_keys)

    async def start(self, connect_timeout: float = 120.0) -> None:
        self.tasks = [asyncio.create_task(p.run(self.stop_event)) for p in self.poles]
        deadline = time.monotonic() + connect_timeout
        while self.stats.connected_now(self.poles) < len(self.poles) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)

    async def produce(self, seconds: float) -> None:
        """Alerts at ``rate``/s over the fleet (Poisson), summaries and health on their periods."""
        end = time.monotonic() + seconds
        next_summary = time.monotonic() + self.cfg.summary_every_s
        next_health = time.monotonic()
        nxt = time.monotonic()
        while time.monotonic() < end:
            now = time.monotonic()
            while nxt <= now:
                self.poles[self.rng.randrange(len(self.poles))].make_alert()
                nxt += self.rng.expovariate(self.cfg.rate) if self.cfg.rate > 0 else seconds
            if now >= next_summary:
                for p in self.poles:
                    p.make_summary()
                next_summary += self.cfg.summary_every_s
            if now >= next_health:
                for p in self.poles:
                    asyncio.ensure_future(p.health())
                next_health += self.cfg.health_every_s
            await asyncio.sleep(min(0.01, max(0.0, nxt - time.monotonic())))

    def pending(self) -> int:
        return sum(len(p.outbox) for p in self.poles)

    async def drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.pending() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        self.stop_event.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)
