"""Every SQL statement the console runs on the ingest schema (fleet/migrations/0001_core.sql),
in one place, so a schema change touches one file. Each returns JSON-ready dicts: times as UTC
milliseconds (what the browser's Date takes), short wire-like keys for alerts (k, s, c, p, as
the poles send them, so the page reads them the same way).
"""

from __future__ import annotations

import datetime as dt
import json

RAW_HOURS = 24  # noise summaries up to this range are returned as stored; longer ones in buckets
MAX_POINTS = 1500


def ms(t: dt.datetime | None) -> int | None:
    return None if t is None else int(t.timestamp() * 1000)


def _json(v) -> dict:
    return json.loads(v) if isinstance(v, str) else (v or {})


# ----------------------------------------------------------------------------- devices

async def devices(db, online_after_s: int) -> list[dict]:
    rows = await db.fetch(
        "SELECT device, site, online, last_seen, boot, agent_version, config_hash, models, lat, lon, "
        "online_since, offline_since, last_seen < now() - make_interval(secs => $1) AS stale "
        "FROM devices ORDER BY device", float(online_after_s))
    return [{"id": r["device"], "site": r["site"], "online": r["online"], "stale": bool(r["stale"]) and r["online"],
             "last_seen": ms(r["last_seen"]), "boot": r["boot"], "agent": r["agent_version"],
             "config_hash": r["config_hash"], "models": _json(r["models"]), "lat": r["lat"], "lon": r["lon"],
             "online_since": ms(r["online_since"]), "offline_since": ms(r["offline_since"])} for r in rows]


async def device_exists(db, device: str) -> bool:
    return await db.fetchval("SELECT EXISTS (SELECT 1 FROM devices WHERE device = $1)", device)


# ------------------------------------------------------------------------------ alerts

ALERT_COLUMNS = ("a.device, a.alert_id, a.site, a.ts, a.kind, a.sensor, a.class, a.confidence, a.window_ms, "
                 "a.metrics, a.model_name, a.model_version, a.replayed, a.ingested_at, k.by_user, k.at AS acked_at")
ACK_JOIN = "LEFT JOIN console_acks k ON k.device = a.device AND k.alert_id = a.alert_id"


def alert_dict(r) -> dict:
    return {"id": r["alert_id"], "device": r["device"], "site": r["site"], "ts": ms(r["ts"]), "k": r["kind"],
            "s": r["sensor"], "c": r["class"], "p": round(r["confidence"], 3) if r["confidence"] is not None else 0.0,
            "w": r["window_ms"], "m": _json(r["metrics"]), "mn": r["model_name"], "mv": r["model_version"],
            "r": r["replayed"], "stored": ms(r["ingested_at"]), "acked_by": r["by_user"], "acked_at": ms(r["acked_at"])}


async def recent_alerts(db, limit: int, device: str | None = None, kind: str | None = None,
                        since: dt.datetime | None = None) -> list[dict]:
    """The last ``limit`` alerts stored (newest first), optionally of one pole / kind / after ``since``."""
    where, args = ["true"], []
    for col, val in (("a.device", device), ("a.kind", kind)):
        if val:
            args.append(val)
            where.append(f"{col} = ${len(args)}")
    if since:
        args.append(since)
        where.append(f"a.ingested_at > ${len(args)}")
    args.append(limit)
    rows = await db.fetch(f"SELECT {ALERT_COLUMNS} FROM alerts a {ACK_JOIN} WHERE {' AND '.join(where)} "
                          f"ORDER BY a.ingested_at DESC LIMIT ${len(args)}", *args)
    return [alert_dict(r) for r in rows]


async def alerts_by_key(db, keys: list[tuple[str, str, dt.date]]) -> list[dict]:
    """Full rows of just-notified alerts, in the order given (primary key lookups)."""
    rows = await db.fetch(
        f"SELECT {ALERT_COLUMNS} FROM unnest($1::text[], $2::text[], $3::date[]) WITH ORDINALITY AS q(device, id, day, n) "
        f"JOIN alerts a ON a.device = q.device AND a.alert_id = q.id AND a.day = q.day {ACK_JOIN} ORDER BY q.n",
        [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys])
    return [alert_dict(r) for r in rows]


async def alerts_in(db, device: str, kinds: list[str], t0: dt.datetime, t1: dt.datetime) -> list[dict]:
    rows = await db.fetch(f"SELECT {ALERT_COLUMNS} FROM alerts a {ACK_JOIN} WHERE a.device = $1 AND a.kind = ANY($2) "
                          "AND a.ts >= $3 AND a.ts <= $4 ORDER BY a.ts LIMIT 5000", device, kinds, t0, t1)
    return [alert_dict(r) for r in rows]


async def latest_alerts(db, device: str, kind: str, limit: int) -> list[dict]:
    """The pole's last ``limit`` alerts of ``kind`` by window end, oldest first."""
    rows = await db.fetch(f"SELECT * FROM (SELECT {ALERT_COLUMNS} FROM alerts a {ACK_JOIN} WHERE a.device = $1 "
                          "AND a.kind = $2 ORDER BY a.ts DESC LIMIT $3) x ORDER BY ts", device, kind, limit)
    return [alert_dict(r) for r in rows]


async def acknowledge(db, alert_id: str, user: str) -> dict | None:
    """Marks an alert handled (first acknowledgement wins); None if no such alert."""
    device = alert_id.split(":", 1)[0]
    if not await db.fetchval("SELECT EXISTS (SELECT 1 FROM alerts WHERE device = $1 AND alert_id = $2)",
                             device, alert_id):
        return None
    await db.execute("INSERT INTO console_acks (device, alert_id, by_user) VALUES ($1, $2, $3) "
                     "ON CONFLICT DO NOTHING", device, alert_id, user)
    r = await db.fetchrow("SELECT by_user, at FROM console_acks WHERE device = $1 AND alert_id = $2", device, alert_id)
    return {"id": alert_id, "by": r["by_user"], "at": ms(r["at"])}


# ------------------------------------------------------------------------------- noise

async def level_summaries(db, device: str, t0: dt.datetime, t1: dt.datetime) -> list[dict]:
    """Summaries as stored for short ranges; for long ones, buckets: LAeq energy-averaged,
    LAFmax the maximum, L10/L90 averaged (an approximation), the last limit in force."""
    hours = (t1 - t0).total_seconds() / 3600
    if hours <= RAW_HOURS:
        rows = await db.fetch("SELECT ts, sensor, seconds, laeq, lafmax, l10, l90, limit_db, period FROM level_summaries "
                              "WHERE device = $1 AND ts >= $2 AND ts <= $3 ORDER BY ts LIMIT 50000", device, t0, t1)
    else:
        bucket = hours * 3600 / MAX_POINTS
        rows = await db.fetch(
            "SELECT date_bin(make_interval(secs => $4), ts, 'epoch') + make_interval(secs => $4) AS ts, sensor, "
            "sum(seconds) AS seconds, 10 * log(avg(power(10, laeq / 10.0))) AS laeq, max(lafmax) AS lafmax, "
            "avg(l10) AS l10, avg(l90) AS l90, (array_agg(limit_db ORDER BY ts DESC))[1] AS limit_db, "
            "(array_agg(period ORDER BY ts DESC))[1] AS period FROM level_summaries "
            "WHERE device = $1 AND ts >= $2 AND ts <= $3 GROUP BY 1, 2 ORDER BY 1", device, t0, t1, bucket)
    return [{"ts": ms(r["ts"]), "s": r["sensor"], "sec": r["seconds"], "laeq": _num(r["laeq"]),
             "lafmax": _num(r["lafmax"]), "l10": _num(r["l10"]), "l90": _num(r["l90"]), "lim": _num(r["limit_db"]),
             "per": r["period"]} for r in rows]


def _num(v) -> float | None:
    return None if v is None else round(float(v), 2)


# ----------------------------------------------------------------------------- metrics

async def fleet_figures(db, online_after_s: int) -> dict:
    """What /metrics reports about the fleet and the ingest path (computed at scrape time)."""
    dev = await db.fetchrow(
        "SELECT count(*) FILTER (WHERE online) AS online, count(*) FILTER (WHERE NOT online) AS offline, "
        "count(*) FILTER (WHERE online AND last_seen < now() - make_interval(secs => $1)) AS stale FROM devices",
        float(online_after_s))
    ing = await db.fetchrow(
        "SELECT count(*) AS n, percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM ingested_at - broker_at)) AS p50, "
        "percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM ingested_at - broker_at)) AS p95, "
        "extract(epoch FROM now() - max(ingested_at)) AS age FROM alerts WHERE ingested_at > now() - interval '60 seconds'")
    last = await db.fetchval("SELECT extract(epoch FROM now() - max(ingested_at)) FROM alerts")
    dead = await db.fetch("SELECT reason, count(*) AS n FROM dead_letters GROUP BY reason")
    return {"online": dev["online"], "offline": dev["offline"], "stale": dev["stale"], "alerts_60s": ing["n"],
            "lag_p50": ing["p50"], "lag_p95": ing["p95"], "last_alert_age": last,
            "dead_letters": {r["reason"]: r["n"] for r in dead}}


# ----------------------------------------------------------------------------- rollouts (fleet/rollout/store.py)

def _plain(v):
    """Datetimes as UTC ms, recursively: the rollout store's rows made JSON-ready."""
    if isinstance(v, dt.datetime):
        return ms(v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


async def rollouts(db, limit: int = 50) -> list[dict]:
    from ..rollout import store
    async with db.acquire() as conn:
        return _plain(await store.listing(conn, limit))


async def rollout(db, rollout_id: int) -> dict | None:
    from ..rollout import store
    async with db.acquire() as conn:
        ro = await store.get(conn, rollout_id)
        if ro is None:
            return None
        stages = await store.stage_counts(conn, rollout_id)
        events = await store.events(conn, rollout_id, 300)
    for s in stages:
        s["fraction"] = ro["stages"][s["stage"]] if s["stage"] < len(ro["stages"]) else None
    return _plain({"rollout": ro, "stages": stages, "events": events})


async def abort_rollout(db, rollout_id: int, by: str) -> str:
    from ..rollout import store
    async with db.acquire() as conn:
        return await store.request_abort(conn, rollout_id, by)
