"""``roadside demo``: brokers, the agent and a replayed street scene; alerts upstream, a summary, nothing left behind.

The demo runs as a child process here (as a user runs it), so the tests can send it SIGINT and
then look for survivors: any process still alive whose command line names the demo's work
folder (both brokers' configs and the agent's config live there), and the PIDs it printed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.cli import main
from agent.config import load_config
from roadside_demo import scene as demo_scene
from roadside_demo.report import energy_mean

REPO = Path(__file__).resolve().parents[1]


class DemoProcess:
    def __init__(self, *args: str, own_group: bool = False):
        # As from a terminal: SIGINT at its default. A runner that starts the tests in the background
        # (`cmd &` in a script) makes them ignore SIGINT, the children inherit that, and Python then
        # installs no Ctrl-C handler at all.
        self.proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "demo", *args], cwd=REPO,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=own_group,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")),
                                        daemon=True)
        self._reader.start()

    @property
    def out(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if re.search(pattern, self.out, flags=re.M):
                return
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.out}")

    def finish(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"demo still running after {timeout} s:\n{self.out}") from None
        self._reader.join(5)
        return rc

    def children(self) -> tuple[list[int], str]:
        """(broker and agent PIDs, work folder) from the demo's own lines."""
        m = re.search(r"pids (\d+), (\d+); agent pid (\d+) \(log (\S+)/agent\.log\)", self.out)
        assert m, self.out
        return [int(m.group(i)) for i in (1, 2, 3)], m.group(4)


def _survivors(pids: list[int], work: str) -> list[str]:
    """Live processes among ``pids`` or naming ``work`` on their command line (zombies count as gone)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (work in cmd or (int(proc.name) in pids and ("mosquitto" in cmd or "agent" in cmd))):
            found.append(f"{proc.name}: {cmd}")
    return found


def test_the_demo_config_validates_and_names_the_shipped_models():
    cfg = load_config(REPO / "firmware_configs" / "demo.yaml")
    assert {"noise", "congestion", "vehicles"} <= set(cfg.tasks.model_dump(exclude_none=True))
    assert cfg.level is not None and cfg.level.period_s == 10


def test_demo_on_real_recordings_prints_alerts_and_a_summary_and_leaves_no_process(data_dir):
    demo = DemoProcess("--duration", "14", "--data", str(data_dir))
    rc = demo.finish(180)
    out = demo.out
    assert rc == 0, out
    pids, work = demo.children()
    assert _survivors(pids, work) == []
    assert "(real recordings)" in out and "SYNTHETIC" not in out
    # The scene opens with 8 s of a held-out siren recording: the noise model must hear it.
    assert re.search(r"^\s+\[\s*[\d.]+ s\] ALERT\s+noise\s+siren\s+p 0\.\d\d\s+mic0", out, flags=re.M), out
    sizes = [int(b) for b in re.findall(r"ALERT .*\((\d+) B\)$", out, flags=re.M)]
    assert sizes and max(sizes) <= 256
    summary = out.split("\nsummary: ", 1)[1]
    assert re.search(r"alerts upstream: \d+", summary) and re.search(r"^\s+noise\s+.*siren \d", summary, flags=re.M)
    # one level summary per 10 s period: the first period ends 10 s into the 14 s scene
    assert "1 level summary of 10 s" in summary
    laeq = re.search(r"all periods: LAeq ([\d.]+) \(energy mean\), LAFmax ([\d.]+)", summary)
    assert laeq and 40 < float(laeq.group(1)) <= float(laeq.group(2)) < 130
    # raw audio: 16 kHz mono PCM16 in 100 ms chunks with a 20-byte header = 32,200 B per second played
    raw_audio = int(re.search(r"raw sensor input [\d,]+ \(audio ([\d,]+)", summary).group(1).replace(",", ""))
    assert 12 * 32200 <= raw_audio <= 14 * 32200
    up = int(re.search(r"bytes upstream ([\d,]+)", summary).group(1).replace(",", ""))
    assert 0 < up < raw_audio / 10
    lat = re.search(r"alert latency \(window end -> city subscriber\): p50 (-?\d+) ms, p95 (-?\d+) ms \(n=(\d+)", summary)
    assert lat and int(lat.group(3)) >= 1 and int(lat.group(1)) <= int(lat.group(2))
    assert re.search(r"agent process: peak RSS \d+ MB", summary)


@pytest.mark.parametrize("target", ["demo", "group"])
def test_ctrl_c_stops_the_demo_cleanly_with_a_summary_and_no_survivors(data_dir, target):
    """``demo``: SIGINT to the demo alone, which must stop its children; ``group``: a terminal's Ctrl-C,
    which reaches the brokers and the agent at the same moment."""
    demo = DemoProcess("--duration", "300", "--data", str(data_dir), own_group=target == "group")
    demo.wait_for(r"^agent online after", 120)
    pids, work = demo.children()
    assert all(Path(f"/proc/{p}").exists() for p in pids)  # the brokers and the agent are running
    time.sleep(2)
    if target == "group":
        os.killpg(demo.proc.pid, signal.SIGINT)
    else:
        os.kill(demo.proc.pid, signal.SIGINT)
    rc = demo.finish(60)
    assert rc == 130, demo.out
    assert "stopped early by Ctrl-C" in demo.out and "alert latency" in demo.out
    raw_audio = re.search(r"raw sensor input [\d,]+ \(audio ([\d,]+)", demo.out)
    assert raw_audio and int(raw_audio.group(1).replace(",", "")) > 0  # what was played is still counted
    assert _survivors(pids, work) == []


def test_a_killed_demo_takes_its_brokers_and_agent_with_it(data_dir):
    """SIGKILL cannot be caught, so the demo cannot stop its children: the kernel tells them (Linux)."""
    demo = DemoProcess("--duration", "300", "--data", str(data_dir))
    demo.wait_for(r"^agent online after", 120)
    pids, work = demo.children()
    demo.proc.kill()
    demo.proc.wait(10)
    deadline = time.monotonic() + 30
    while _survivors(pids, work) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _survivors(pids, work) == []


def test_without_data_the_scene_is_synthetic_and_the_python_broker_serves(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("ROADSIDE_DATA", raising=False)
    monkeypatch.setattr(demo_scene, "DEFAULT_DATA", tmp_path / "absent")
    assert main(["demo", "--duration", "11", "--broker", "python"]) == 0
    out = capsys.readouterr().out
    assert "this scene is SYNTHETIC" in out and "(SYNTHETIC: audio" in out
    assert "in-process MQTT 3.1.1 broker" in out
    assert "1 level summary of 10 s" in out
    raw = re.search(r"raw sensor input [\d,]+ \((.*)\)$", out, flags=re.M).group(1)
    assert re.search(r"audio [\d,]+", raw) and re.search(r"detector [\d,]+", raw)  # generated, but sent


def test_a_named_folder_without_demo_data_is_refused(tmp_path, capsys):
    assert main(["demo", "--duration", "2", "--data", str(tmp_path)]) == 2
    assert str(tmp_path) in capsys.readouterr().err


def test_a_non_positive_duration_is_refused(capsys):
    assert main(["demo", "--duration", "0"]) == 2
    assert "--duration" in capsys.readouterr().err


def test_whole_scene_level_is_the_energy_mean_of_the_periods():
    assert energy_mean([80.0, 80.0], [10, 10]) == pytest.approx(80.0)
    assert energy_mean([70.0, 80.0], [10, 10]) == pytest.approx(77.40, abs=0.01)  # 10 log10((10^7 + 10^8) / 2)
    assert energy_mean([70.0, 80.0], [30, 10]) == pytest.approx(10 * __import__("math").log10((3e7 + 1e8) / 4))
