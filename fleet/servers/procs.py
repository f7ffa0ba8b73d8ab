"""Child processes of the city stack: started in their own process group, stopped by PID.

Every server the stack runs (nats-server, postgres, ingest workers) is a ``Proc``: started with
``start_new_session`` so that it and whatever it forks (postgres' backends) share one process
group whose id is the child's PID; stopped by signalling that group, never by a process name
(other people's servers run on the same machine). CPU time is read from /proc per group, so
the bench can say which component saturates.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float, proc: "Proc | None" = None, what: str = "server") -> None:
    """Until 127.0.0.1:port accepts a TCP connection; RuntimeError (naming the log) otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{what} exited with {proc.popen.returncode}; see {proc.log}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not accept connections on 127.0.0.1:{port} within {timeout} s; see "
                       f"{proc.log if proc else 'its log'}")


class Proc:
    """One child process in its own process group, output appended to ``log``."""

    def __init__(self, name: str, argv: list[str], log: Path, *, env: dict | None = None, cwd: Path | None = None,
                 user: int | None = None):
        self.name, self.argv, self.log = name, argv, log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._out = open(log, "ab")
        kw = {"user": user, "group": user, "extra_groups": []} if user is not None else {}
        self.popen = subprocess.Popen(argv, stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      env=env, cwd=cwd, start_new_session=True, **kw)
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send(self, sig: int) -> None:
        """``sig`` to the whole process group (the child and what it forked)."""
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
        """Polite stop, then SIGKILL of the group and of whatever it forked; returns the exit code."""
        strays = descendants(self.pid)
        if self.alive():
            self.send(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.send(signal.SIGKILL)
                self.popen.wait(timeout)
        self._kill_strays(strays)
        self._out.close()
        return self.popen.returncode

    def kill(self) -> None:
        """kill -9 of the group, as a crash would (the fault tests)."""
        strays = descendants(self.pid)
        self.send(signal.SIGKILL)
        self.popen.wait(10)
        self._kill_strays(strays)
        self._out.close()

    def _kill_strays(self, known: list[int] | None = None) -> None:
        # What it forked outside its group (postgres backends after a postmaster kill -9) or left behind.
        self.send(signal.SIGKILL)
        for pid in (known or []) + descendants(self.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def cpu_s(self) -> float:
        return group_cpu_s(self.pid)


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds incl. reaped children) for every process."""
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        out[int(entry.name)] = (int(fields[1]), sum(int(x) for x in fields[11:15]) / CLOCK_TICKS)
    return out


def descendants(pid: int, table: dict | None = None) -> list[int]:
    """Children, grandchildren, ... of ``pid`` (postgres' backends call setsid: not in its group)."""
    table = table if table is not None else _proc_table()
    kids: dict[int, list[int]] = {}
    for p, (ppid, _) in table.items():
        kids.setdefault(ppid, []).append(p)
    out, todo = [], list(kids.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def group_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and all its descendants (plus their reaped children)."""
    table = _proc_table()
    return sum(table[p][1] for p in [pid, *descendants(pid, table)] if p in table)


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants, MiB (shared pages counted in each: an upper bound)."""
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return round(total / 1024, 1)


def pids_alive(pids: list[int]) -> list[int]:
    """Those of ``pids`` that still exist and are not zombies (the tests' "nothing left running")."""
    out = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.append(pid)
    return out
