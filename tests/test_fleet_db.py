"""The city database on a real PostgreSQL: migrations from empty, partitions, idempotent writes, device state."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil

import pytest

from fleet import db
from fleet.writer import Batch, write

UTC = dt.timezone.utc


def run(coro):
    return asyncio.run(coro)


async def _with(url, fn):
    conn = await db.connect(url)
    try:
        return await fn(conn)
    finally:
        await conn.close()


def alert(device="orin-0001", seq=1, ts=None, broker_at=None) -> dict:
    ts = ts or dt.datetime.now(UTC).replace(microsecond=0)
    return {"day": ts.date(), "device": device, "alert_id": f"{device}:1:{seq}", "site": "lab", "boot": 1, "seq": seq,
            "ts": ts, "time_synced": True, "kind": "noise", "sensor": "mic0", "class": "siren", "confidence": 0.9,
            "window_ms": 4000, "metrics": "{}", "model_name": "noise", "model_version": "1", "model_sha": "0" * 16,
            "config_hash": "f" * 16, "replayed": False, "broker_at": broker_at or ts}


def state(online: bool, boot: int, at: dt.datetime, device="orin-0001") -> dict:
    return {"device": device, "site": "lab", "online": online, "boot": boot, "agent_version": "0.1.0" if online else None,
            "config_hash": "f" * 16 if online else None, "models": '{"noise": {"name": "noise"}}' if online else None,
            "proto": "3.1.1" if online else None, "lat": 51.5 if online else None, "lon": -0.1 if online else None,
            "broker_at": at}


def test_migrations_apply_in_order_from_an_empty_database_and_only_once(fresh_db):
    files = db.migrations()
    assert files[0].version == "0001" and [m.version for m in files] == sorted(m.version for m in files)
    applied = run(_with(fresh_db, db.migrate))
    assert applied == [m.version for m in files]
    assert run(_with(fresh_db, db.migrate)) == []  # a second run changes nothing

    async def inspect(conn):
        tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
        rows = await conn.fetch("SELECT version, sha256 FROM schema_migrations ORDER BY version")
        return tables, [(r["version"], r["sha256"]) for r in rows]
    tables, recorded = run(_with(fresh_db, inspect))
    assert {"devices", "alerts", "alerts_default", "level_summaries", "health", "dead_letters",
            "schema_migrations"} <= tables
    today = dt.datetime.now(UTC).date()
    assert f"alerts_p{today:%Y%m%d}" in tables and f"level_summaries_p{today:%Y%m%d}" in tables
    assert recorded == [(m.version, m.sha256) for m in files]


def test_a_migration_edited_after_it_was_applied_is_an_error_naming_it(fresh_db, tmp_path):
    folder = tmp_path / "migrations"
    shutil.copytree(db.MIGRATIONS, folder)
    run(_with(fresh_db, lambda c: db.migrate(c, folder)))
    first = sorted(folder.glob("0001_*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(db.MigrationError, match=first.name):
        run(_with(fresh_db, lambda c: db.migrate(c, folder)))


def test_a_badly_named_migration_file_is_refused(tmp_path):
    (tmp_path / "1_x.sql").write_text("SELECT 1")
    with pytest.raises(db.MigrationError, match="1_x.sql"):
        db.migrations(tmp_path)


def test_a_redelivered_batch_stores_each_alert_once_and_counts_the_duplicates(fresh_db):
    async def go(conn):
        await db.migrate(conn)
        b = Batch(alerts=[alert(seq=i) for i in range(1, 6)])
        first = await write(conn, b)
        again = await write(conn, Batch(alerts=[alert(seq=i) for i in range(1, 8)]))  # 5 old + 2 new
        return first, again, await conn.fetchval("SELECT count(*) FROM alerts")
    first, again, n = run(_with(fresh_db, go))
    assert (first.alerts, first.duplicates) == (5, 0)
    assert (again.alerts, again.duplicates) == (2, 5)
    assert n == 7


def test_alerts_land_in_their_days_partition_and_very_old_clocks_in_the_default(fresh_db):
    async def go(conn):
        await db.migrate(conn)
        now = dt.datetime.now(UTC).replace(microsecond=0)
        await write(conn, Batch(alerts=[alert(seq=1, ts=now), alert(seq=2, ts=dt.datetime(1970, 1, 2, tzinfo=UTC))]))
        rows = await conn.fetch("SELECT seq, tableoid::regclass::text AS part FROM alerts ORDER BY seq")
        # A day whose rows sit in the default partition gets no partition (it could not be attached).
        await conn.fetchval("SELECT roadside_ensure_partitions('1970-01-02', '1970-01-02')")
        made = await conn.fetchval("SELECT to_regclass('alerts_p19700102') IS NOT NULL")
        return now, [(r["seq"], r["part"]) for r in rows], made
    now, rows, made = run(_with(fresh_db, go))
    assert rows == [(1, f"alerts_p{now:%Y%m%d}"), (2, "alerts_default")]
    assert made is False


def test_each_stored_alert_is_notified_once_for_the_live_feed(fresh_db):
    async def go(conn):
        await db.migrate(conn)
        got: list[str] = []
        await conn.add_listener("roadside_alerts", lambda *a: got.append(a[3]))
        await write(conn, Batch(alerts=[alert(seq=1)]))
        await write(conn, Batch(alerts=[alert(seq=1)]))  # a redelivery: no row, no notification
        await asyncio.sleep(0.3)
        return got
    import json
    got = run(_with(fresh_db, go))
    assert [json.loads(g)["id"] for g in got] == ["orin-0001:1:1"]


def test_device_state_follows_birth_and_will_and_ignores_stale_ones(fresh_db):
    t = dt.datetime.now(UTC)
    s = dt.timedelta(seconds=1)

    async def go(conn):
        await db.migrate(conn)
        seen = []

        async def apply(*states):
            await write(conn, Batch(states=list(states)))
            r = await conn.fetchrow("SELECT online, boot, lat, models FROM devices WHERE device='orin-0001'")
            seen.append((r["online"], r["boot"], r["lat"], "noise" in r["models"]))
        await apply(state(True, 12, t))                  # birth
        await apply(state(False, 11, t + s))             # the will of an older boot, published late: ignored
        await apply(state(False, 12, t + 2 * s))         # this boot's will: offline, models and position kept
        await apply(state(True, 12, t + s))              # an older birth redelivered after it: ignored
        await apply(state(True, 13, t + 3 * s))          # back, new boot
        return seen
    assert run(_with(fresh_db, go)) == [(True, 12, 51.5, True), (True, 12, 51.5, True), (False, 12, 51.5, True),
                                        (False, 12, 51.5, True), (True, 13, 51.5, True)]
