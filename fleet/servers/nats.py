"""A NATS cluster on 127.0.0.1: N nodes, JetStream on, an MQTT listener on each, per-device users.

Each node is ``nats-server -c nodeK/node.conf`` (server_name ``nK``, cluster ``city``, routes to
every node, JetStream store in ``nodeK/js``) and includes the shared ``auth.conf``: the
operations user (workers, tools: everything) and one user per pole, whose permissions let it
publish only under ``roadside.v1.<site>.<device>.>`` (MQTT ``roadside/v1/<site>/<device>/#``;
the site is pinned when known, else ``*``), never its own command topics, and subscribe only to
its own ``cmd.*``. Adding poles rewrites auth.conf and reloads every node (SIGHUP): no restart.

NATS 2.9's MQTT (no MQTT 5, no QoS 2) stores every QoS 1 PUBLISH in the ``$MQTT_msgs`` stream
(replicated ``mqtt.stream_replicas`` ways) *before* it sends the PUBACK; that stream is what the
ingest workers consume (see ``fleet.streams``). QoS 1 subscribers (a pole's ``cmd/+``) are
delivered through ``$MQTT.sub.<random>`` subjects, which 2.9 checks against the user's
subscribe permissions: a pole is allowed ``$MQTT.sub.>`` (NATS refuses MQTT subscriptions to
that prefix itself, and the delivery subjects are random).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path

from agent.config.device import ID_PATTERN

from .procs import Proc, free_port, wait_port

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
OPS_USER = "city-ops"


def _q(s: str) -> str:
    return json.dumps(s)  # NATS config accepts JSON strings


def device_permissions(device: str, site: str | None) -> dict:
    """What a pole may do, as NATS subjects (MQTT ``/`` is NATS ``.``)."""
    base = f"roadside.v1.{site or '*'}.{device}"
    return {"publish": {"allow": [f"{base}.>"], "deny": [f"roadside.v1.*.{device}.cmd.*"]},
            "subscribe": {"allow": [f"{base}.cmd.*", "$MQTT.sub.>"]}}


def check_device_id(device: str, what: str = "device id") -> None:
    """The agent's own rule (``device.id``): it also keeps NATS wildcards and '.' out of subjects."""
    if not re.fullmatch(ID_PATTERN, device or ""):
        raise ValueError(f"{what} {device!r}: must match {ID_PATTERN} (as the agent's device.id)")


def _write_secret(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    os.replace(tmp, path)


@dataclass
class Node:
    name: str
    folder: Path
    client_port: int
    cluster_port: int
    mqtt_port: int
    http_port: int
    proc: Proc | None = None
    pid: int | None = None  # of a node another process started (``Stack.attach``)


@dataclass
class NatsCluster:
    folder: Path
    nodes_n: int = 3
    tls: tuple[Path, Path] | None = None  # (certificate, key) of the MQTT listener
    ops_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    devices: dict[str, dict] = field(default_factory=dict)  # device -> {"password", "site"}
    nodes: list[Node] = field(default_factory=list)
    env: dict | None = None  # the nodes' environment (e.g. GOMAXPROCS)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.registry = self.folder / "users.json"  # who may connect, kept so a restart keeps the passwords
        if self.registry.is_file():
            saved = json.loads(self.registry.read_text())
            self.ops_password, self.devices = saved["ops_password"], {**saved["devices"], **self.devices}
        if not Path(NATS_SERVER).is_file():
            raise FileNotFoundError(f"nats-server not found (looked for {NATS_SERVER}); install Debian's nats-server")
        if not self.nodes:
            self.nodes = [Node(f"n{i + 1}", self.folder / f"n{i + 1}", free_port(), free_port(), free_port(),
                               free_port()) for i in range(self.nodes_n)]

    # ------------------------------------------------------------------ addresses

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{n.client_port}" for n in self.nodes]

    @property
    def mqtt_ports(self) -> list[int]:
        return [n.mqtt_port for n in self.nodes]

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    # ------------------------------------------------------------------ config

    def write_auth(self) -> None:
        users = [f"{{user: {_q(OPS_USER)}, password: {_q(self.ops_password)}}}"]
        for dev, d in sorted(self.devices.items()):
            perms = json.dumps(device_permissions(dev, d.get("site")))
            users.append(f"{{user: {_q(dev)}, password: {_q(d['password'])}, permissions: {perms}}}")
        _write_secret(self.folder / "auth.conf",
                      "authorization {\n  users: [\n    " + ",\n    ".join(users) + "\n  ]\n}\n")
        _write_secret(self.registry, json.dumps({"ops_password": self.ops_password, "devices": self.devices}))

    def node_config(self, n: Node) -> str:
        routes = ", ".join(f"nats-route://127.0.0.1:{m.cluster_port}" for m in self.nodes)
        tls = ""
        if self.tls:
            tls = f"\n  tls {{ cert_file: {_q(str(self.tls[0]))}, key_file: {_q(str(self.tls[1]))}, timeout: 5 }}"
        return (f"server_name: {n.name}\nlisten: 127.0.0.1:{n.client_port}\nhttp: 127.0.0.1:{n.http_port}\n"
                f"max_payload: 1MB\n"
                f"jetstream {{ store_dir: {_q(str(n.folder / 'js'))}, max_memory_store: 256MB, max_file_store: 8GB }}\n"
                + (f"cluster {{ name: city, listen: 127.0.0.1:{n.cluster_port}, routes: [{routes}] }}\n"
                   if len(self.nodes) > 1 else "") +  # one node: standalone JetStream (a cluster of 1 waits for peers)
                f"mqtt {{\n  listen: 127.0.0.1:{n.mqtt_port}\n  stream_replicas: {min(3, len(self.nodes))}\n"
                f"  ack_wait: \"30s\"{tls}\n}}\n"
                f"include ../auth.conf\n")

    # ------------------------------------------------------------------ processes

    def start(self, timeout: float = 30.0) -> None:
        self.write_auth()
        for n in self.nodes:
            self.start_node(n.name, wait=False)
        for n in self.nodes:
            wait_port(n.client_port, timeout, n.proc, f"nats {n.name}")
            wait_port(n.mqtt_port, timeout, n.proc, f"nats {n.name} MQTT")

    def start_node(self, name: str, wait: bool = True, timeout: float = 30.0) -> None:
        n = self.node(name)
        n.folder.mkdir(parents=True, exist_ok=True)
        conf = n.folder / "node.conf"
        conf.write_text(self.node_config(n))
        n.proc = Proc(f"nats-{n.name}", [NATS_SERVER, "-c", str(conf)], n.folder / "nats.log", env=self.env)
        if wait:
            wait_port(n.client_port, timeout, n.proc, f"nats {n.name}")
            wait_port(n.mqtt_port, timeout, n.proc, f"nats {n.name} MQTT")

    def kill_node(self, name: str) -> None:
        """kill -9 (the fault tests); ``start_node`` brings it back on the same ports and store."""
        n = self.node(name)
        if n.proc is not None:
            n.proc.kill()

    def stop(self) -> None:
        for n in self.nodes:
            if n.proc is not None:
                n.proc.stop(timeout=15, sig=signal.SIGTERM)

    def reload(self) -> None:
        """New auth.conf into every running node (SIGHUP = config reload in nats-server)."""
        self.write_auth()
        for n in self.nodes:
            if n.proc is not None and n.proc.alive():
                os.kill(n.proc.pid, signal.SIGHUP)
            elif n.proc is None and n.pid is not None:
                try:
                    os.kill(n.pid, signal.SIGHUP)
                except ProcessLookupError:
                    pass

    def add_devices(self, devices: dict[str, str | None], reload: bool = True) -> dict[str, str]:
        """Credentials for ``{device: site or None}`` (existing ones kept); returns ``{device: password}``."""
        for dev, site in devices.items():
            check_device_id(dev)
            if site is not None:
                check_device_id(site, "site")
            if dev == OPS_USER:
                raise ValueError(f"device id {dev!r} is reserved for the operations user")
            if dev not in self.devices:
                self.devices[dev] = {"password": secrets.token_urlsafe(12), "site": site}
        if reload:
            self.reload()
        return {d: self.devices[d]["password"] for d in devices}

    def violations(self) -> dict[str, int]:
        """Permission violations the nodes logged (a pole publishing or subscribing outside its own
        topics: NATS 2.9 still PUBACKs such a publish in MQTT 3.1.1, drops it, and logs it)."""
        out = {"publish": 0, "subscribe": 0}
        for n in self.nodes:
            try:
                text = (n.folder / "nats.log").read_text(errors="replace")
            except OSError:
                continue
            out["publish"] += text.count("- Publish Violation -")
            out["subscribe"] += text.count("- Subscription Violation -")
        return out

    def pids(self) -> list[int]:
        return [n.proc.pid for n in self.nodes if n.proc is not None]

    def ops_urls(self) -> list[str]:
        return [f"nats://{OPS_USER}:{self.ops_password}@127.0.0.1:{n.client_port}" for n in self.nodes]
