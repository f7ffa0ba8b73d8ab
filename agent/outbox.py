"""Durable outbox: every alert and summary is in SQLite (WAL) before it is published.

Shadow reports (``agent.shadow``) are stored as summaries: evicted first, never at an alert's cost.

A row leaves the table only when the city broker acknowledged it (PUBACK) or when the
store is over its byte bounds: above ``max_bytes`` of payload the oldest summaries go
first; alerts go only above ``hard_cap_bytes``, oldest first, and each one dropped is
counted. ``hard_cap_bytes`` also bounds what the store occupies on disk (the database file
plus its WAL; ``disk_bytes``): over it, the WAL is checkpointed and truncated and free pages
are returned to the file system (incremental auto-vacuum) first, then the oldest rows go,
summaries before alerts. Small pages (1 kB) keep an empty store near 5 kB, so even the
smallest allowed cap holds messages; SQLite's fixed 32 kB ``-shm`` index is not counted. The
message sequence number is allocated in the same transaction as the row is written, so
after a crash or power loss no id is reused and none is skipped for a stored message.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ALERT, SUMMARY = 0, 1
PAGE_SIZE = 1024
ROW_OVERHEAD = 64  # bytes of a row besides its payload (ids, topic, index entry), to size an eviction
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    priority INTEGER NOT NULL,      -- 0 alert, 1 summary
    topic TEXT NOT NULL,            -- suffix under {prefix}/{site}/{device}/
    payload BLOB NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_priority ON outbox (priority, id);
"""


class OutboxError(RuntimeError):
    """The store cannot be opened or written; the message names the file."""


@dataclass(frozen=True)
class Row:
    id: int
    priority: int
    topic: str
    payload: bytes


class Outbox:
    def __init__(self, path: Path | str, max_bytes: int, hard_cap_bytes: int):
        self.path = Path(path)
        self.max_bytes, self.hard_cap_bytes = max_bytes, hard_cap_bytes
        self._lock = threading.Lock()  # one connection shared by the worker and the uplink threads
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
            self._small_pages()
            self._db.execute("PRAGMA journal_mode=WAL")
            # The WAL is part of the on-disk bound: checkpoint often, truncate it back after each checkpoint.
            wal_cap = max(4096, hard_cap_bytes // 4)
            self._db.execute(f"PRAGMA wal_autocheckpoint={max(4, wal_cap // PAGE_SIZE)}")
            self._db.execute(f"PRAGMA journal_size_limit={wal_cap}")
            # FULL: a committed alert survives power loss too, not only a process crash.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as e:
            raise OutboxError(f"outbox {self.path}: {e}") from None

    def _small_pages(self) -> None:
        """1 kB pages and incremental auto-vacuum (set on a new file; an older file is converted once)."""
        if self._db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2 and \
                self._db.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE:
            return
        self._db.execute("PRAGMA journal_mode=DELETE")  # page size and auto-vacuum change only outside WAL
        self._db.execute(f"PRAGMA page_size={PAGE_SIZE}")
        self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        self._db.execute("VACUUM")

    def disk_bytes(self) -> int:
        """What the store occupies on disk: the database file and its WAL."""
        with self._lock:
            return self._disk()

    def _disk(self) -> int:
        try:
            wal = os.path.getsize(f"{self.path}-wal")
        except OSError:
            wal = 0
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        return pages * self._db.execute("PRAGMA page_size").fetchone()[0] + wal

    def _compact(self) -> None:
        """Give back what deleted rows held: checkpoint and truncate the WAL, release free pages."""
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.execute("PRAGMA incremental_vacuum")
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _enforce_disk(self) -> None:
        """Over ``hard_cap_bytes`` on disk: compact, then drop the oldest rows (summaries first) until under."""
        for _ in range(16):
            if self._disk() <= self.hard_cap_bytes:
                return
            self._compact()
            excess = self._disk() - self.hard_cap_bytes
            if excess <= 0:
                return
            freed = 0
            for priority, counter in ((SUMMARY, "summaries_dropped"), (None, "alerts_dropped")):
                while freed < excess:
                    q = "SELECT id, LENGTH(payload), priority FROM outbox"
                    row = self._db.execute(q + (" WHERE priority = ?" if priority is not None else "")
                                           + " ORDER BY id LIMIT 1", () if priority is None else (priority,)).fetchone()
                    if row is None:
                        break
                    with self._db:
                        self._db.execute("DELETE FROM outbox WHERE id = ?", (row[0],))
                        self._add("summaries_dropped" if row[2] == SUMMARY else counter, 1)
                    freed += row[1] + ROW_OVERHEAD
            if freed == 0:
                return  # nothing left to drop: the floor of an empty store

    # ------------------------------------------------------------------ counters in meta

    def _get(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else 0

    def _add(self, key: str, n: int) -> int:
        self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                         "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value", (key, n))
        return self._get(key)

    def next_boot(self) -> int:
        """Count this start; alert ids carry it so that ids stay unique even if seq were reset."""
        with self._lock, self._db:
            return self._add("boot", 1)

    def counter(self, key: str) -> int:
        with self._lock:
            return self._get(key)

    # ------------------------------------------------------------------------- messages

    def put(self, priority: int, topic: str, build: Callable[[int], bytes]) -> tuple[int, int, bytes]:
        """Store one message; ``build(seq)`` makes its payload. Returns (row id, seq, payload)."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                seq = self._add("seq", 1)
                payload = build(seq)
                cur = self._db.execute("INSERT INTO outbox (priority, topic, payload, created_ms) VALUES (?, ?, ?, ?)",
                                       (priority, topic, payload, int(time.time() * 1000)))
                row_id = cur.lastrowid
                self._evict()
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._enforce_disk()
        return row_id, seq, payload

    def _bytes(self, priority: int | None = None) -> int:
        q = "SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM outbox"
        return self._db.execute(q + (" WHERE priority = ?" if priority is not None else ""),
                                () if priority is None else (priority,)).fetchone()[0]

    def _evict(self) -> None:
        total = self._bytes()
        while total > self.max_bytes:
            row = self._db.execute("SELECT id, LENGTH(payload) FROM outbox WHERE priority = ? ORDER BY id LIMIT 1",
                                   (SUMMARY,)).fetchone()
            if row is None:
                break
            self._db.execute("DELETE FROM outbox WHERE id = ?", (row[0],))
            self._add("summaries_dropped", 1)
            total -= row[1]
        while total > self.hard_cap_bytes:
            row = self._db.execute("SELECT id, LENGTH(payload) FROM outbox ORDER BY id LIMIT 1").fetchone()
            if row is None:
                break
            self._db.execute("DELETE FROM outbox WHERE id = ?", (row[0],))
            self._add("alerts_dropped", 1)
            total -= row[1]

    def pending(self, after_id: int = 0, limit: int = 100) -> list[Row]:
        """Stored messages after ``after_id``, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT id, priority, topic, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                                    (after_id, limit)).fetchall()
        return [Row(*r) for r in rows]

    def ack(self, row_id: int) -> None:
        """The broker has it: forget it."""
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
            self._enforce_disk()  # a delete grows the WAL too

    def max_id(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COALESCE(MAX(id), 0) FROM outbox").fetchone()[0]

    def stats(self) -> dict[str, int]:
        with self._lock:
            n_alerts, n_summaries = (self._db.execute("SELECT COUNT(*) FROM outbox WHERE priority = ?", (p,)).fetchone()[0]
                                     for p in (ALERT, SUMMARY))
            return {"alerts": n_alerts, "summaries": n_summaries, "bytes": self._bytes(), "disk": self._disk(),
                    "alerts_dropped": self._get("alerts_dropped"), "summaries_dropped": self._get("summaries_dropped")}

    def close(self) -> None:
        with self._lock:
            self._db.close()
