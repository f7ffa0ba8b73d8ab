"""Fixtures for the city side's tests: a real NATS cluster, PostgreSQL and ingest workers on 127.0.0.1.

- ``fleet_stack`` (session): one stack shared by the tests that only publish and read (3 NATS
  nodes, 2 workers). Tests that kill things make their own with ``make_stack``.
- ``make_stack(nodes=3, workers=2, **kw)`` (function): a fresh ``fleet.stack.Stack``, stopped
  after the test, which then checks that none of its PIDs is left running.
- ``pg_server`` (session): PostgreSQL alone; ``fresh_db`` (function): an empty database in it, by URL.
- ``device_creds(stack, device, site)``: MQTT user name and a password file (0600) for a pole,
  as an agent config's ``uplink.broker.username`` / ``password_file``.
- ``Pole``: a paho MQTT 3.1.1 client with a pole's own credentials; ``alert(device, seq)``: an alert
  from the agent's encoder; ``sql(stack, query, *args)``: rows as dicts; ``wait_for(fn, timeout, what)``.

The stack's folder is a ``tempfile.mkdtemp`` under /tmp opened to 0711: as root, postgres runs as
``nobody`` and must reach its data folder (pytest's own tmp folders are 0700).
Tests skip when nats-server or PostgreSQL is not installed, and fail under CI=true.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

from ops_fixtures import wait_until as wait_for  # noqa: F401  (the fleet tests import it from here)


def _need(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what}; CI must run the fleet tests (scripts/bootstrap installs it)")
    pytest.skip(what)


def _check_engines() -> None:
    from fleet.servers.nats import NATS_SERVER
    from fleet.servers.postgres import pg_bindir

    if not Path(NATS_SERVER).is_file():
        _need(f"nats-server not installed ({NATS_SERVER})")
    try:
        pg_bindir()
    except FileNotFoundError as e:
        _need(str(e))
    for mod in ("nats", "asyncpg"):
        try:
            __import__(mod)
        except ImportError:
            _need(f"python package {mod} missing (pip install -e '.[fleet]')")


def stack_folder(prefix: str = "roadside-city-") -> Path:
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    d.chmod(0o711)
    return d


def device_creds(stack, device: str, site: str | None = None) -> tuple[str, Path]:
    """(username, password file) for ``device`` on ``stack``'s MQTT listeners."""
    pw = stack.add_devices({device: site})[device]
    path = stack.folder / "secrets" / f"{device}.password"
    path.parent.mkdir(exist_ok=True)
    path.write_text(pw + "\n")
    path.chmod(0o600)
    return device, path


def _start(nodes: int = 3, workers: int = 2, **kw):
    from fleet.stack import Stack

    _check_engines()
    folder = stack_folder()
    return Stack(folder, nodes=nodes, workers=workers, **kw).start()


def _finish(stack) -> None:
    stack.stop()
    left = stack.leftovers()
    shutil.rmtree(stack.folder, ignore_errors=True)
    assert not left, f"processes left running after stop(): {left}"


@pytest.fixture(scope="session")
def fleet_stack():
    stack = _start()
    yield stack
    _finish(stack)


@pytest.fixture
def make_stack():
    made = []

    def make(nodes: int = 3, workers: int = 2, **kw):
        made.append(_start(nodes, workers, **kw))
        return made[-1]

    yield make
    for s in made:
        _finish(s)


@pytest.fixture(scope="session")
def pg_server():
    from fleet.servers.postgres import Postgres

    _check_engines()
    folder = stack_folder("roadside-pg-")
    pg = Postgres(folder / "pg")
    pg.start()
    yield pg
    pg.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def fresh_db(pg_server) -> str:
    """URL of a new, empty database (no migrations applied)."""
    import asyncpg

    name = "t_" + secrets.token_hex(6)

    async def create():
        conn = await asyncpg.connect(pg_server.url)
        try:
            await conn.execute(f"CREATE DATABASE {name}")
        finally:
            await conn.close()
    asyncio.run(create())
    return pg_server.url.rsplit("/", 1)[0] + "/" + name


# ------------------------------------------------------------------ helpers for the tests

def sql(stack, query: str, *args) -> list[dict]:
    async def go():
        import asyncpg
        conn = await asyncpg.connect(stack.db_url)
        try:
            return [dict(r) for r in await conn.fetch(query, *args)]
        finally:
            await conn.close()
    return asyncio.run(go())


class Pole:
    """A paho MQTT 3.1.1 client with the pole's own credentials (what the agent's uplink uses)."""

    def __init__(self, stack, device: str, site: str = "lab", port_index: int = 0, will: bool = True,
                 username: str | None = None, password: str | None = None):
        if username is None:
            username, pwfile = device_creds(stack, device, site)
            password = pwfile.read_text().strip()
            time.sleep(0.5)  # every node reloads its users
        self.base = f"roadside/v1/{site}/{device}"
        self.got: list[tuple[str, bytes]] = []
        self.subacks: list = []
        self.connected = threading.Event()
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"roadside-{device}-up", protocol=paho.MQTTv311)
        self.c.username_pw_set(username, password)
        if will:
            self.c.will_set(f"{self.base}/state", b'{"v":1,"online":false,"boot":1}', qos=1, retain=True)
        self.c.on_connect = lambda c, u, f, rc, p: self.connected.set() if rc.value == 0 else None
        self.c.on_message = lambda c, u, m: self.got.append((m.topic, m.payload))
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.append([r.value for r in rcs])
        self.c.connect("127.0.0.1", stack.mqtt_ports[port_index], keepalive=10)
        self.c.loop_start()
        assert self.connected.wait(10), f"{device} not connected"

    def publish(self, suffix: str, payload: bytes, qos: int = 1, retain: bool = False, base: str | None = None):
        info = self.c.publish(f"{base or self.base}/{suffix}", payload, qos=qos, retain=retain)
        if qos:
            info.wait_for_publish(10)
        return info

    def subscribe(self, topic: str) -> list[int]:
        n = len(self.subacks)
        self.c.subscribe(topic, qos=1)
        return wait_for(lambda: self.subacks[n:] and self.subacks[n], 10, f"SUBACK for {topic}")

    def vanish(self) -> None:
        """The network drops: no DISCONNECT, so the broker publishes the will."""
        self.c.socket().shutdown(2)
        self.c.loop_stop()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def alert(device: str, seq: int) -> bytes:
    from agent.alerts import Origin, encode_alert

    return encode_alert(Origin(device, 1, "f" * 16), seq, ts_ms=int(time.time() * 1000), synced=True, kind="noise",
                        sensor="mic0", cls="siren", confidence=0.9, window_ms=4000, metrics={}, model=None)
