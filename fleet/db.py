"""The city database: migrations, connections, partitions (asyncpg).

Migrations are ``fleet/migrations/NNNN_name.sql``, applied in order from an empty database,
each in its own transaction, recorded in ``schema_migrations`` (version, name, sha256,
applied_at). A migration already applied whose file has changed since is an error naming the
file (write a new migration instead). Concurrent ``migrate()`` calls are serialised by an
advisory lock, so every worker may call it at start.

Tables (0001_core.sql has the column comments; the console builds its queries on these):

- ``devices`` (PK device): site, online, last_seen, state_at, online_since, offline_since, boot,
  agent_version, config_hash, models jsonb {task: {name, version, sha256, backend, ...}},
  proto, lat, lon (from the state message's optional ``loc``), first_seen, updated_at.
- ``alerts`` (PK device, alert_id, day; partitioned by ``day`` = UTC date of ts): site, boot,
  seq, ts, time_synced, kind, sensor, class, confidence, window_ms, metrics jsonb, model_name,
  model_version, model_sha, config_hash, replayed, broker_at, ingested_at. Partitions are
  ``alerts_pYYYYMMDD`` plus ``alerts_default``. Indexes on ts, (device, ts), (kind, ts), ingested_at.
  Each insert NOTIFYs channel ``roadside_alerts`` with a small JSON (device, id, day, site, kind,
  class, p, ts, ingested_at).
- ``level_summaries`` (PK device, summary_id, day; partitioned like alerts): site, ts,
  time_synced, sensor, seconds, laeq, lafmax, l10, l90, limit_db, period, config_hash,
  replayed, broker_at, ingested_at.
- ``health`` (PK device, ts): site, boot, up_s, cpu_pct, rss_mb, queue, outbox_alerts, doc
  jsonb (the whole health message), broker_at, ingested_at.
- ``dead_letters`` (id; unique stream, stream_seq): subject, reason, detail, payload bytea,
  received_at.
- ``command_acks``, ``shadow_reports``: the poles' answers to commands and their shadow reports
  (0003_rollouts.sql), which the rollout controller reads instead of listening to the broker.
- ``rollouts``, ``rollout_targets``, ``rollout_events``: each rollout's plan and gates, every
  pole's place in it, and every step (fleet/rollout/, docs/rollouts.md).
- ``schema_migrations`` (version PK, name, sha256, applied_at).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

MIGRATIONS = Path(__file__).with_name("migrations")
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
PARTITION_DAYS_AHEAD = 7


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def migrations(folder: Path = MIGRATIONS) -> list[Migration]:
    found = []
    for p in sorted(folder.glob("*.sql")):
        m = _NAME.match(p.name)
        if not m:
            raise MigrationError(f"{p}: migration files are named NNNN_lowercase_name.sql")
        found.append(Migration(m.group(1), m.group(2), p))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"{folder}: two migrations share a version number: {versions}")
    return found


async def connect(url: str, **kw):
    import asyncpg

    return await asyncpg.connect(url, **kw)


async def migrate(conn, folder: Path = MIGRATIONS) -> list[str]:
    """Apply the migrations not yet applied, in order; the versions applied now."""
    await conn.execute("""CREATE TABLE IF NOT EXISTS schema_migrations (
        version text PRIMARY KEY, name text NOT NULL, sha256 text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now())""")
    applied_now = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('roadside_migrate'))")
        done = {r["version"]: r for r in await conn.fetch("SELECT version, name, sha256 FROM schema_migrations")}
    for m in migrations(folder):
        if m.version in done:
            if done[m.version]["sha256"] != m.sha256:
                raise MigrationError(f"{m.path}: changed after it was applied (sha256 differs); "
                                     f"write a new migration instead of editing an applied one")
            continue
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('roadside_migrate'))")
            if await conn.fetchval("SELECT 1 FROM schema_migrations WHERE version=$1", m.version):
                continue  # another process applied it while we waited
            try:
                await conn.execute(m.sql)
            except Exception as e:
                raise MigrationError(f"{m.path}: {type(e).__name__}: {e}") from e
            await conn.execute("INSERT INTO schema_migrations (version, name, sha256) VALUES ($1, $2, $3)",
                               m.version, m.name, m.sha256)
        applied_now.append(m.version)
    await ensure_partitions(conn)
    return applied_now


async def ensure_partitions(conn, today: dt.date | None = None, ahead: int = PARTITION_DAYS_AHEAD) -> int:
    """Daily partitions from yesterday to ``ahead`` days on (alerts, level_summaries); how many were made."""
    today = today or dt.datetime.now(dt.timezone.utc).date()
    return await conn.fetchval("SELECT roadside_ensure_partitions($1, $2)", today - dt.timedelta(days=1),
                               today + dt.timedelta(days=ahead))


async def migrate_url(url: str) -> list[str]:
    conn = await connect(url)
    try:
        return await migrate(conn)
    finally:
        await conn.close()
