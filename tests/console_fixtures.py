"""Fixtures for the console's tests: the real console on the real city stack, a real browser.

- ``console`` (session): ``roadside fleet serve`` as a child process (own process group, stopped
  by PID) on ``fleet_stack``'s PostgreSQL, with an operator and a viewer made by
  ``roadside fleet user add``; ``console.url``, ``console.users[role] = (name, password)``.
- ``Pole``: a simulated pole on the stack's NATS MQTT listener with its own credentials, sending
  state (with ``loc``), level summaries and alerts built by the agent's own encoders.
- ``browser`` (session): headless Debian chromium through chromedriver (selenium).
- ``http_session(console, role)``: an httpx client logged in through the login form, with the
  session's CSRF token (read from the page's meta tag, as the page scripts do).

Screenshots go to ``runs/screenshots/`` (git-ignored). Tests skip when chromium or chromedriver
is missing, and fail under CI=true.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / "runs" / "screenshots"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def _need(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what}; CI must run the console tests (scripts/bootstrap installs it)")
    pytest.skip(what)


def roadside(*args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], input=stdin, capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, **(env or {})}, timeout=60)


class Console:
    def __init__(self, db_url: str, folder: Path, nats_urls: list[str] | None = None):
        self.db_url = db_url
        self.users = {role: (f"{role}-{secrets.token_hex(3)}", secrets.token_urlsafe(12)) for role in ("operator", "viewer")}
        for role, (name, pw) in self.users.items():
            r = roadside("fleet", "user", "add", name, "--role", role, "--password-stdin", "--db", db_url, stdin=pw + "\n")
            assert r.returncode == 0, r.stderr
        self.log = folder / "console.log"
        self._out = open(self.log, "wb")
        env = {**os.environ, "ROADSIDE_NATS_URLS": ",".join(nats_urls or [])}  # credentials kept out of argv
        self.proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "fleet", "serve", "--db", db_url, "--port", "0"],
                                     stdout=subprocess.PIPE, stderr=self._out, cwd=REPO, start_new_session=True, env=env)
        line = self.proc.stdout.readline().decode()  # "console: http://127.0.0.1:PORT/"
        m = re.search(r"(http://\S+?)/?$", line.strip())
        if not m:
            self.stop()
            raise RuntimeError(f"console did not start: {line!r}; see {self.log}")
        self.url = m.group(1)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/login", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"console not ready at {self.url}; see {self.log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own group: never anyone else's server
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._out.close()


@pytest.fixture(scope="session")
def console(fleet_stack):
    c = Console(fleet_stack.db_url, fleet_stack.folder, fleet_stack.nats_urls)
    yield c
    c.stop()


# --------------------------------------------------------------------------- a test pole

class Pole:
    """One simulated pole: its own MQTT connection and credentials, the agent's encoders."""

    def __init__(self, stack, device: str, site: str, loc: tuple[float, float] | None = None, boot: int = 1,
                 tasks: tuple[str, ...] = ("noise",)):
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        from agent.alerts import Origin

        self.device, self.site, self.seq = device, site, 0
        self.origin = Origin(device, boot, "c0ffee0123456789")
        self.prefix = f"roadside/v1/{site}/{device}"
        password = stack.add_devices({device: site})[device]
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=device, protocol=paho.MQTTv311,
                                  clean_session=True)
        self.client.username_pw_set(device, password)
        self.client.will_set(f"{self.prefix}/state", json.dumps({"v": 1, "online": False, "boot": boot}), 1, True)
        self._connect(stack.mqtt_ports[0])
        state = {"v": 1, "online": True, "ts": int(time.time() * 1000), "boot": boot, "agent": "0.1.0",
                 "ch": self.origin.config_hash, "proto": "3.1.1",
                 "models": {t: {"name": f"{t}-test", "version": "1.0.0", "sha256": "ab" * 32} for t in tasks}}
        if loc:
            state["loc"] = {"lat": loc[0], "lon": loc[1]}
        self.publish("state", json.dumps(state).encode(), retain=True)

    def _connect(self, port: int, timeout: float = 15.0) -> None:
        """Until the broker accepts (it reloads its users after add_devices: the first try may be refused)."""
        import threading

        ok = threading.Event()
        self.client.on_connect = lambda c, u, f, reason, p: ok.set() if not reason.is_failure else None
        self.client.loop_start()
        deadline = time.monotonic() + timeout
        self.client.connect_async("127.0.0.1", port, keepalive=10)
        while not ok.wait(0.5):
            if time.monotonic() > deadline:
                raise RuntimeError(f"pole {self.device}: the broker on {port} did not accept it in {timeout} s")

    def publish(self, suffix: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(f"{self.prefix}/{suffix}", payload, qos=1, retain=retain)
        info.wait_for_publish(10)

    def alert(self, kind: str = "noise", cls: str = "siren", p: float = 0.9, ts_ms: int | None = None,
              sensor: str = "mic0", metrics: dict | None = None) -> str:
        from agent.alerts import ModelInfo, encode_alert, message_id

        self.seq += 1
        payload = encode_alert(self.origin, self.seq, ts_ms=ts_ms or int(time.time() * 1000), synced=True, kind=kind,
                               sensor=sensor, cls=cls, confidence=p, window_ms=4000, metrics=metrics or {},
                               model=ModelInfo(f"{kind}-test", "1.0.0", "ab" * 32))
        self.publish(f"alert/{kind}", payload)
        return message_id(self.origin, self.seq)

    def summary(self, ts_ms: int, laeq: float, limit_db: float = 70.0) -> str:
        from agent.alerts import encode_summary, message_id

        self.seq += 1
        payload = encode_summary(self.origin, self.seq, ts_ms=ts_ms, synced=True, sensor="mic0", seconds=10.0,
                                 laeq=laeq, lafmax=laeq + 12, l10=laeq + 3, l90=laeq - 6, limit_db=limit_db,
                                 period="day")
        self.publish("summary", payload)
        return message_id(self.origin, self.seq)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def wait_for(predicate, timeout: float, what: str, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# ---------------------------------------------------------------------- HTTP and browser

def http_session(console: Console, role: str):
    """An httpx client logged in as the ``role`` user; ``client.csrf`` is the session's token."""
    import httpx

    name, pw = console.users[role]
    c = httpx.Client(base_url=console.url, timeout=10)
    form = c.get("/login").text
    token = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
    r = c.post("/login", data={"csrf": token, "name": name, "password": pw, "next": "/"})
    assert r.status_code == 303, r.text
    c.csrf = re.search(r'name="csrf-token" content="([^"]+)"', c.get("/").text).group(1)
    return c


@pytest.fixture(scope="session")
def browser():
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        _need(f"chromium or chromedriver missing ({CHROMIUM}, {CHROMEDRIVER}); Debian chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000",
              "--disable-extensions", "--no-first-run"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.implicitly_wait(0)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def browser_login(driver, console: Console, role: str, path: str = "/") -> None:
    from selenium.webdriver.common.by import By

    driver.delete_all_cookies()
    driver.get(console.url + path)
    name, pw = console.users[role]
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(pw)
    driver.find_element(By.CSS_SELECTOR, "form.login button[type=submit]").click()
    wait_for(lambda: "/login" not in driver.current_url, 10, f"login as {role}")


def console_errors(driver) -> list[str]:
    """Errors the page logged (JS exceptions, refused resources, CSP violations)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


# ---------------------------------------------------------------------- rollouts

def seed_rollouts(db_url: str, prefix: str = "seed") -> dict[str, int]:
    """Three rollouts written the way the controller writes them (fleet.rollout.store): one completed,
    one halted by its agreement gate at the canaries, one running (for the abort button). Ids by state."""
    import asyncio
    import asyncpg

    from fleet.rollout import gates, store

    def ro(task: str, release: int, stages: list[float]) -> dict:
        bound = gates.Bounds(max_disagreement=0.09).to_dict()
        return {"task": task, "bundle_sha256": f"{release:x}" * 64, "model_sha256": f"{release + 1:x}" * 64,
                "release": release, "version": f"{release}.0", "base_bundle_sha256": "a" * 64,
                "base_model_sha256": "b" * 64, "base_release": release - 1, "stages": stages,
                "bounds": {**bound, "sources": {"max_disagreement": "(1 - metrics.int8_cpu.agreement 0.930) + 0.02"}},
                "settings": {"windows": 300, "minutes": 30, "report_every": 100}}
    targets = [(f"{prefix}-{i:02d}", f"site-{i % 3}", 0 if i < 1 else 1 if i < 5 else 2) for i in range(10)]

    async def go():
        conn = await asyncpg.connect(db_url)
        try:
            for state in ("running", "halting", "aborting"):  # one at a time per task: finish any leftover
                await conn.execute("UPDATE rollouts SET state='halted' WHERE state=$1 AND task='vehicles'", state)
            ids = {}
            done = await store.create(conn, ro("congestion", 4, [0.1, 0.5, 1.0]), targets, "alice")
            await store.update_targets(conn, done, [{"device": d, "status": "promoted", "ran": True}
                                                    for d, *_ in targets])
            await store.event(conn, done, "completed", {"reason": "every pole runs the candidate"})
            await store.set_phase(conn, done, stage=2, phase="done", state="completed",
                                  reason="every pole runs the candidate")
            ids["completed"] = done
            bad = await store.create(conn, ro("noise", 7, [0.1, 0.5, 1.0]), targets, "alice")
            gate = {"gate": "agreement", "value": 0.444, "bound": 0.09, "stage": 0, "phase": "shadow",
                    "detail": "disagreement 0.444 over 600 windows on 1 poles",
                    "figures": {"poles": 1, "windows": 600, "agreement": 0.556}}
            await store.update_targets(conn, bad, [{"device": d, "status": "aborted" if k == 0 else "skipped"}
                                                   for d, _, k in targets])
            await store.event(conn, bad, "halted", {"reason": gate["detail"], "gate": gate})
            await store.set_phase(conn, bad, phase="done", state="halted", gate=gate, reason=gate["detail"])
            ids["halted"] = bad
            ids["running"] = await store.create(conn, ro("vehicles", 9, [0.2, 1.0]),
                                                [(d, site, min(k, 1)) for d, site, k in targets], "carol")
            return ids
        finally:
            await conn.close()
    return asyncio.run(go())
