"""The local city stack: a NATS cluster, PostgreSQL and ingest workers in one folder, on 127.0.0.1.

One API for ``roadside fleet up``, the tests, the bench and the console's demo::

    with Stack(Path("city"), nodes=3, workers=2) as s:     # start() ... stop()
        pw = s.add_devices({"orin-0001": "lab"})           # MQTT user + password per pole
        s.mqtt_ports, s.db_url, s.nats_urls                  # where to connect
        s.kill_worker("w1"); s.nats.kill_node("n2"); s.pg.restart()   # the fault drills

Layout of the folder: ``nats/nK/`` (node.conf, js/, nats.log), ``nats/auth.conf`` (users, 0600),
``pg/`` (data/, postgres.log, password), ``workers/wK.log`` and ``wK.json`` (each worker's
counters), ``stack.json`` (ports, URLs with passwords and PIDs, 0600; ``roadside fleet
devices/alerts --dir`` read the DB URL from it). Every process is a child in its own process
group and ``stop()`` leaves none running (the tests check the PIDs).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path

from .servers.nats import OPS_USER, NatsCluster
from .servers.postgres import Postgres
from .servers.procs import Proc, pids_alive

REPO = Path(__file__).resolve().parents[1]


def run_async(coro):
    """``asyncio.run`` that also works when the caller already runs an event loop (in a thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    out: dict = {}

    def target():
        try:
            out["v"] = asyncio.run(coro)
        except BaseException as e:  # re-raised in the caller
            out["e"] = e
    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "e" in out:
        raise out["e"]
    return out.get("v")


class Stack:
    def __init__(self, folder: Path, nodes: int = 3, workers: int = 2, tls: tuple[Path, Path] | None = None,
                 pg_settings: dict[str, str] | None = None, batch: int = 500):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.nats = NatsCluster(self.folder / "nats", nodes_n=nodes, tls=tls)
        self.pg = Postgres(self.folder / "pg", settings=pg_settings)
        self.n_workers, self.batch = workers, batch
        self.workers: dict[str, Proc] = {}
        self._all_pids: set[int] = set()

    # ------------------------------------------------------------------ addresses

    @property
    def db_url(self) -> str:
        return self.pg.url

    @property
    def nats_urls(self) -> list[str]:
        """Operations credentials included (workers, tools)."""
        return self.nats.ops_urls()

    @property
    def mqtt_ports(self) -> list[int]:
        return self.nats.mqtt_ports

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 60.0) -> "Stack":
        try:
            self.nats.start(timeout)
            self.pg.start(timeout)
            self._remember()
            from .db import migrate_url
            run_async(migrate_url(self.db_url))
            self._prime_mqtt(timeout)
            run_async(self._ensure_streams(timeout))
            for i in range(self.n_workers):
                self.start_worker(f"w{i + 1}")
            self.write_info()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        from .servers.procs import descendants
        self._remember()
        for pid in list(self._all_pids):  # postgres backends too: the leftovers check covers them
            self._all_pids.update(descendants(pid))
        for w in self.workers.values():
            w.stop(timeout=10)
        self.nats.stop()
        self.pg.stop()

    def __enter__(self) -> "Stack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _remember(self) -> None:
        self._all_pids.update(self.nats.pids() + self.pg.pids() + [w.pid for w in self.workers.values()])

    def pids(self) -> list[int]:
        """Every PID this stack ever started (killed and restarted ones too)."""
        self._remember()
        return sorted(self._all_pids)

    def leftovers(self) -> list[int]:
        return pids_alive(self.pids())

    # ------------------------------------------------------------------ parts

    def _prime_mqtt(self, timeout: float) -> None:
        """One MQTT connection as operations: NATS makes its $MQTT_ streams at the first one."""
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        deadline = time.monotonic() + timeout
        while True:
            c = paho.Client(CallbackAPIVersion.VERSION2, client_id="roadside-stack-prime",
                            protocol=paho.MQTTv311, clean_session=True)
            c.username_pw_set(OPS_USER, self.nats.ops_password)
            if self.nats.tls:
                import ssl
                c.tls_set(cert_reqs=ssl.CERT_NONE)  # our own listener on 127.0.0.1: only priming it
                c.tls_insecure_set(True)
            c.on_connect = lambda cl, u, f, reason, p: setattr(cl, "_roadside_rc", reason.value)
            try:
                c.connect("127.0.0.1", self.mqtt_ports[0], keepalive=10)
                rc = None
                end = time.monotonic() + 5
                while time.monotonic() < end and rc is None:
                    c.loop(0.1)
                    rc = getattr(c, "_roadside_rc", None)
                c.disconnect()
                if rc == 0:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"NATS MQTT did not accept a connection within {timeout} s; "
                                   f"see {self.nats.nodes[0].folder / 'nats.log'}")
            time.sleep(0.5)

    async def _ensure_streams(self, timeout: float) -> None:
        import nats

        from .streams import ensure_streams
        nc = await nats.connect(servers=self.nats_urls, connect_timeout=5)
        try:
            await ensure_streams(nc.jetstream(timeout=10), replicas=min(3, len(self.nats.nodes)), timeout=timeout)
        finally:
            await nc.close()

    def worker_env(self) -> dict:
        return {**os.environ, "ROADSIDE_NATS_URLS": ",".join(self.nats_urls), "ROADSIDE_DB_URL": self.db_url,
                "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def start_worker(self, name: str) -> Proc:
        folder = self.folder / "workers"
        argv = [sys.executable, "-m", "fleet.ingest", "--name", name, "--batch", str(self.batch),
                "--stats", str(folder / f"{name}.json")]
        self.workers[name] = Proc(f"worker-{name}", argv, folder / f"{name}.log", env=self.worker_env(), cwd=REPO)
        self._remember()
        return self.workers[name]

    def kill_worker(self, name: str) -> None:
        self.workers[name].kill()

    def worker_stats(self) -> dict[str, dict]:
        out = {}
        for p in sorted((self.folder / "workers").glob("*.json")):
            try:
                out[p.stem] = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
        return out

    def add_devices(self, devices: dict[str, str | None]) -> dict[str, str]:
        """MQTT credentials for ``{device: site}``; every node reloads its users."""
        pw = self.nats.add_devices(devices)
        if not getattr(self, "attached", False):
            self.write_info()
        return pw

    def cpu_s(self) -> dict[str, float]:
        return {"nats": sum(n.proc.cpu_s() for n in self.nats.nodes if n.proc),
                "postgres": self.pg.proc.cpu_s() if self.pg.proc else 0.0,
                "workers": sum(w.cpu_s() for w in self.workers.values())}

    def rss_mb(self) -> dict[str, float]:
        from .servers.procs import tree_rss_mb
        return {**{f"nats_{n.name}": tree_rss_mb(n.proc.pid) for n in self.nats.nodes if n.proc},
                "postgres": tree_rss_mb(self.pg.proc.pid) if self.pg.proc else 0.0,
                "workers": sum(tree_rss_mb(w.pid) for w in self.workers.values())}

    def write_info(self) -> Path:
        info = {"db_url": self.db_url, "nats_urls": self.nats_urls, "mqtt_ports": self.mqtt_ports,
                "nodes": {n.name: {"client": n.client_port, "mqtt": n.mqtt_port, "cluster": n.cluster_port,
                                   "http": n.http_port, "pid": n.proc.pid if n.proc else None}
                          for n in self.nats.nodes},
                "postgres": {"port": self.pg.port, "pid": self.pg.proc.pid if self.pg.proc else None},
                "workers": {k: w.pid for k, w in self.workers.items()}, "tls": bool(self.nats.tls)}
        path = self.folder / "stack.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=1))
        tmp.chmod(0o600)
        os.replace(tmp, path)
        return path


def attach(folder: Path) -> Stack:
    """The stack another process (``roadside fleet up``) runs in ``folder``: its addresses, and
    ``add_devices`` (users rewritten, nodes reloaded by their PIDs). Starts and stops nothing."""
    info = read_info(folder)
    from .servers.nats import Node

    s = Stack.__new__(Stack)
    s.folder, s.n_workers, s.batch, s.workers, s._all_pids, s.attached = Path(folder), 0, 0, {}, set(), True
    nodes = [Node(name, Path(folder) / "nats" / name, n["client"], n["cluster"], n["mqtt"], n["http"], pid=n["pid"])
             for name, n in info["nodes"].items()]
    s.nats = NatsCluster(Path(folder) / "nats", nodes_n=len(nodes), nodes=nodes)
    s.pg = Postgres(Path(folder) / "pg", port=info["postgres"]["port"])
    return s


def read_info(folder: Path) -> dict:
    """What a running stack wrote in ``folder/stack.json`` (for commands run beside ``fleet up``)."""
    path = Path(folder) / "stack.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is `roadside fleet up --dir {folder}` running?")
    return json.loads(path.read_text())
