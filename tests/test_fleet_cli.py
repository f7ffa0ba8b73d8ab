"""``roadside fleet up / simulate / devices / alerts`` as a user runs them, and ``--help`` everywhere."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from fleet.servers.procs import pids_alive
from fleet_fixtures import _check_engines, stack_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def roadside(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cli", "fleet", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def _commands() -> list[str]:
    import pkgutil

    from fleet import commands
    return sorted(m.name for m in pkgutil.iter_modules(commands.__path__))


@pytest.mark.parametrize("command", _commands())
def test_every_fleet_command_has_help(command):
    r = roadside(command, "--help", timeout=60)
    assert r.returncode == 0 and "usage: roadside fleet" in r.stdout, r.stderr


def test_up_simulate_devices_alerts_then_ctrl_c_leaves_nothing_running():
    _check_engines()
    folder = stack_folder("roadside-up-")
    up = subprocess.Popen([sys.executable, "-m", "agent.cli", "fleet", "up", "--dir", str(folder), "--workers", "1"],
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while not (folder / "stack.json").is_file() and up.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (folder / "stack.json").is_file(), up.stdout.read() if up.poll() is not None else "no stack.json"
        info = json.loads((folder / "stack.json").read_text())
        pids = [n["pid"] for n in info["nodes"].values()] + [info["postgres"]["pid"], *info["workers"].values()]
        assert len(pids_alive(pids)) == 5

        sim = roadside("simulate", "--dir", str(folder), "--devices", "20", "--rate", "40", "--seconds", "3",
                       "--sites", "2")
        assert sim.returncode == 0, sim.stderr
        report = json.loads(sim.stdout.strip().splitlines()[-1])
        assert report["connected"] == 20 and report["acked"] == report["alerts"] > 0 and report["pending"] == 0

        time.sleep(2)  # the last batch commits
        devices = [json.loads(x) for x in roadside("devices", "--dir", str(folder), "--json").stdout.splitlines()]
        assert len(devices) == 20 and {d["site"] for d in devices} == {"site-01", "site-02"}
        assert all(d["state"] == "offline" for d in devices)  # the simulator stopped cleanly
        assert all("noise=noise:1@" in d["models"] for d in devices)
        alerts = roadside("alerts", "--dir", str(folder), "--json", "--limit", "100000").stdout.splitlines()
        assert len(alerts) == report["acked"]
        one = json.loads(alerts[0])["device"]
        only = roadside("alerts", "--dir", str(folder), "--json", "--device", one, "--limit", "100000").stdout
        assert {json.loads(x)["device"] for x in only.splitlines()} == {one}
        assert "--since 'yesterday'" in roadside("alerts", "--dir", str(folder), "--since", "yesterday").stderr
    finally:
        up.send_signal(signal.SIGINT)
        out, _ = up.communicate(timeout=60)
    assert up.returncode == 0, out
    assert "nothing left running" in out
    assert pids_alive(pids) == []
    shutil.rmtree(folder, ignore_errors=True)
