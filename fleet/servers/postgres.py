"""A PostgreSQL database cluster in a folder, on a free 127.0.0.1 port, as a child process.

``initdb`` then ``postgres -D data`` (not ``pg_ctl``: the postmaster is our child, so it is stopped
by PID and its CPU is counted). TCP on 127.0.0.1 only, no Unix socket (its default directory
belongs to the system's PostgreSQL), password authentication (SCRAM) for the ``roadside`` role
with a generated password kept in ``pg/password`` (0600).

PostgreSQL refuses to run as root. Started by root (as here and in CI), the data folder is given
to ``nobody`` and initdb/postgres run as that user: the folder's parents must let ``nobody``
through (the error says which one does not; ``tempfile.mkdtemp`` + chmod 0711 is enough).
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .procs import Proc, free_port, wait_port

NOBODY = 65534
DB_NAME = "roadside"
ROLE = "roadside"


def pg_bindir() -> Path:
    found = shutil.which("pg_config")
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    if candidates:
        return Path(candidates[-1])
    if found:
        return Path(subprocess.check_output([found, "--bindir"], text=True).strip())
    raise FileNotFoundError("PostgreSQL binaries not found (/usr/lib/postgresql/*/bin); install Debian's postgresql")


def _check_reachable(folder: Path, uid: int) -> None:
    """Every parent of ``folder`` must let ``uid`` (not its owner) pass, or postgres cannot reach its data."""
    for parent in [folder, *folder.parents]:
        st = parent.stat()
        if st.st_uid != uid and not st.st_mode & 0o001:
            raise PermissionError(f"{parent} (mode {oct(st.st_mode & 0o777)}) does not let user {uid} through; "
                                  f"postgres runs as that user when started by root: chmod o+x it or pick another --dir")


class Postgres:
    def __init__(self, folder: Path, port: int | None = None, settings: dict[str, str] | None = None):
        self.folder = folder
        self.data = folder / "data"
        self.port = port or free_port()
        self.settings = {"shared_buffers": "128MB", "max_connections": "100", "synchronous_commit": "on",
                         "fsync": "on", "log_min_messages": "warning", **(settings or {})}
        self.bin = pg_bindir()
        self.user = NOBODY if os.geteuid() == 0 else None
        self.proc: Proc | None = None
        pw = folder / "password"
        self.password = pw.read_text().strip() if pw.is_file() else None

    @property
    def url(self) -> str:
        return f"postgresql://{ROLE}:{self.password}@127.0.0.1:{self.port}/{DB_NAME}"

    def _env(self) -> dict:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "HOME": str(self.folder),
                "PGPASSWORD": self.password or ""}

    def _run(self, argv: list[str]) -> None:
        kw = {"user": self.user, "group": self.user, "extra_groups": []} if self.user is not None else {}
        r = subprocess.run(argv, env=self._env(), cwd=self.folder, capture_output=True, text=True, **kw)
        if r.returncode != 0:
            raise RuntimeError(f"{Path(argv[0]).name} failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-800:]}")

    def init(self) -> None:
        """initdb, once (an existing data folder is kept: ``fleet up`` on the same DIR resumes)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if (self.data / "PG_VERSION").is_file():
            return
        if self.user is not None:
            _check_reachable(self.folder.resolve(), self.user)
            os.chown(self.folder, self.user, self.user)
        self.password = secrets.token_urlsafe(18)
        pwfile = self.folder / "password"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        if self.user is not None:
            os.chown(pwfile, self.user, self.user)
        self._run([str(self.bin / "initdb"), "-D", str(self.data), "-U", ROLE, f"--pwfile={pwfile}",
                   "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"])

    def start(self, timeout: float = 30.0) -> None:
        if self.password is None:
            self.init()
        args = [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
                "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="]
        for k, v in self.settings.items():
            args += ["-c", f"{k}={v}"]
        self.proc = Proc("postgres", args, self.folder / "postgres.log", env=self._env(), cwd=self.folder,
                         user=self.user)
        wait_port(self.port, timeout, self.proc, "postgres")
        self._wait_ready(timeout)
        self._ensure_db()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            r = subprocess.run([str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", ROLE,
                                "-d", "postgres", "-q"], env=self._env())
            if r.returncode == 0:
                return
            if time.monotonic() > deadline or not self.proc.alive():
                raise RuntimeError(f"postgres not ready on 127.0.0.1:{self.port}; see {self.proc.log}")
            time.sleep(0.1)

    def _ensure_db(self) -> None:
        psql = [str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", ROLE, "-d", "postgres",
                "-tAc"]
        r = subprocess.run(psql + [f"SELECT 1 FROM pg_database WHERE datname='{DB_NAME}'"], env=self._env(),
                           capture_output=True, text=True)
        if r.stdout.strip() != "1":
            self._run([str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", ROLE, DB_NAME])

    def stop(self, timeout: float = 20.0) -> None:
        """Fast shutdown (SIGINT: open transactions roll back, committed ones are on disk)."""
        if self.proc is not None:
            self.proc.stop(timeout=timeout, sig=signal.SIGINT)

    def restart(self, timeout: float = 30.0) -> None:
        self.stop()
        self.start(timeout)

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None else []
