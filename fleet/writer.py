"""One batch of parsed messages into PostgreSQL, in one transaction, idempotently.

Rows go in with ``INSERT ... SELECT FROM unnest(arrays) ON CONFLICT DO NOTHING`` (one round
trip per table, however big the batch); ``RETURNING`` tells which were new, so a redelivery
is counted as a duplicate and stored nothing. Devices are touched in device order, so two
workers never wait on each other's rows in opposite orders (no deadlock). ``last_seen`` is
only rewritten when it moves by more than ``LAST_SEEN_STEP`` (most messages change no device
row: the hot path stays insert-only).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .counters import counters

LAST_SEEN_STEP = "5 seconds"

ALERT_COLS = [("day", "date"), ("device", "text"), ("alert_id", "text"), ("site", "text"), ("boot", "int"),
              ("seq", "bigint"), ("ts", "timestamptz"), ("time_synced", "bool"), ("kind", "text"),
              ("sensor", "text"), ("class", "text"), ("confidence", "real"), ("window_ms", "int"),
              ("metrics", "jsonb"), ("model_name", "text"), ("model_version", "text"), ("model_sha", "text"),
              ("config_hash", "text"), ("replayed", "bool"), ("broker_at", "timestamptz")]
SUMMARY_COLS = [("day", "date"), ("device", "text"), ("summary_id", "text"), ("site", "text"), ("ts", "timestamptz"),
                ("time_synced", "bool"), ("sensor", "text"), ("seconds", "real"), ("laeq", "real"),
                ("lafmax", "real"), ("l10", "real"), ("l90", "real"), ("limit_db", "real"), ("period", "text"),
                ("config_hash", "text"), ("replayed", "bool"), ("broker_at", "timestamptz")]
HEALTH_COLS = [("device", "text"), ("ts", "timestamptz"), ("site", "text"), ("boot", "int"), ("up_s", "float8"),
               ("cpu_pct", "real"), ("rss_mb", "real"), ("queue", "int"), ("outbox_alerts", "int"),
               ("doc", "jsonb"), ("broker_at", "timestamptz")]
SHADOW_COLS = [("device", "text"), ("report_id", "text"), ("site", "text"), ("ts", "timestamptz"), ("task", "text"),
               ("cand16", "text"), ("active16", "text"), ("n", "int"), ("sk", "int"), ("agr", "real"), ("cf", "real"),
               ("acf", "real"), ("div", "real"), ("p95_active", "real"), ("p95_cand", "real"), ("err", "int"),
               ("final", "bool"), ("broker_at", "timestamptz")]
ACK_COLS = [("device", "text"), ("cmd", "text"), ("cmd_id", "text"), ("site", "text"), ("ok", "bool"),
            ("status", "text"), ("stage", "text"), ("reason", "text"), ("doc", "jsonb"), ("ts", "timestamptz"),
            ("broker_at", "timestamptz")]
DEAD_COLS = [("subject", "text"), ("reason", "text"), ("detail", "text"), ("payload", "bytea"), ("stream", "text"),
             ("stream_seq", "bigint")]


def _insert(table: str, cols: list[tuple[str, str]], conflict: str, returning: str) -> str:
    # jsonb cannot be an unnest array element type through asyncpg's text codec; pass text[] and cast.
    params = ", ".join(f"${i + 1}::{'text' if t == 'jsonb' else t}[]" for i, (_, t) in enumerate(cols))
    select = ", ".join(f"{'u.' + c}::jsonb" if t == "jsonb" else f"u.{c}" for c, t in cols)
    names = ", ".join(f'"{c}"' for c, _ in cols)
    alias = ", ".join(c for c, _ in cols)
    return (f"INSERT INTO {table} ({names}) SELECT {select} FROM unnest({params}) AS u({alias}) "
            f"ON CONFLICT {conflict} DO NOTHING RETURNING {returning}")


SQL_ALERTS = _insert("alerts", ALERT_COLS, "(device, alert_id, day)", "alert_id")
SQL_SUMMARIES = _insert("level_summaries", SUMMARY_COLS, "(device, summary_id, day)", "summary_id")
SQL_HEALTH = _insert("health", HEALTH_COLS, "(device, ts)", "device")
SQL_SHADOW = _insert("shadow_reports", SHADOW_COLS, "(device, report_id)", "report_id")
SQL_ACKS = _insert("command_acks", ACK_COLS, "(device, cmd, cmd_id)", "cmd_id")
SQL_DEAD = _insert("dead_letters", DEAD_COLS, "(stream, stream_seq)", "id")

SQL_SEEN = f"""
INSERT INTO devices (device, site, last_seen) SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[])
ON CONFLICT (device) DO UPDATE SET last_seen = EXCLUDED.last_seen, site = EXCLUDED.site
WHERE devices.last_seen IS NULL OR devices.last_seen < EXCLUDED.last_seen - interval '{LAST_SEEN_STEP}'
   OR devices.site <> EXCLUDED.site"""

# A state message wins only if the broker stored it after the one already applied and it is not
# the will of an older boot (a will published late, after the pole came back).
SQL_STATE = """
INSERT INTO devices AS d (device, site, online, state_at, boot, agent_version, config_hash, models, proto, lat, lon,
                          last_seen, online_since, offline_since)
VALUES ($1::text, $2::text, $3::bool, $4::timestamptz, $5::int, $6::text, $7::text, coalesce($8::jsonb, '{}'::jsonb),
        $9::text, $10::float8, $11::float8, $4::timestamptz,
        CASE WHEN $3::bool THEN $4::timestamptz END, CASE WHEN NOT $3::bool THEN $4::timestamptz END)
ON CONFLICT (device) DO UPDATE SET
    site = EXCLUDED.site, online = EXCLUDED.online, state_at = EXCLUDED.state_at, boot = EXCLUDED.boot,
    agent_version = coalesce(EXCLUDED.agent_version, d.agent_version),
    config_hash = coalesce(EXCLUDED.config_hash, d.config_hash),
    models = CASE WHEN $8::jsonb IS NULL THEN d.models ELSE EXCLUDED.models END,
    proto = coalesce(EXCLUDED.proto, d.proto),
    lat = CASE WHEN EXCLUDED.online THEN EXCLUDED.lat ELSE d.lat END,
    lon = CASE WHEN EXCLUDED.online THEN EXCLUDED.lon ELSE d.lon END,
    last_seen = greatest(d.last_seen, EXCLUDED.last_seen),
    online_since = CASE WHEN EXCLUDED.online AND NOT d.online THEN EXCLUDED.state_at
                        WHEN EXCLUDED.online THEN coalesce(d.online_since, EXCLUDED.state_at) ELSE d.online_since END,
    offline_since = CASE WHEN NOT EXCLUDED.online AND (d.online OR d.offline_since IS NULL) THEN EXCLUDED.state_at
                         WHEN NOT EXCLUDED.online THEN d.offline_since ELSE NULL END,
    updated_at = clock_timestamp()
WHERE (d.state_at IS NULL OR d.state_at <= EXCLUDED.state_at)
  AND (EXCLUDED.online OR d.boot IS NULL OR EXCLUDED.boot >= d.boot)"""


@dataclass
class Batch:
    alerts: list[dict] = field(default_factory=list)
    summaries: list[dict] = field(default_factory=list)
    health: list[dict] = field(default_factory=list)
    states: list[dict] = field(default_factory=list)
    shadow: list[dict] = field(default_factory=list)   # shadow reports (rollouts)
    acks: list[dict] = field(default_factory=list)     # command answers (rollouts)
    dead: list[dict] = field(default_factory=list)
    seen: dict[str, tuple[str, object]] = field(default_factory=dict)  # device -> (site, latest broker time)

    def saw(self, device: str, site: str, at) -> None:
        old = self.seen.get(device)
        if old is None or at > old[1]:
            self.seen[device] = (site, at)


class Written(counters("alerts summaries health states shadow acks dead duplicates")):
    """Rows a batch stored, per kind; ``duplicates``: alerts and summaries that were already there."""


def _columns(rows: list[dict], cols: list[tuple[str, str]]) -> list[list]:
    return [[r[c] for r in rows] for c, _ in cols]


async def write(conn, b: Batch) -> Written:
    """Everything in ``b`` in one transaction (the caller acks only after this returns)."""
    w = Written()
    async with conn.transaction():
        for rows, sql, cols, attr in ((b.alerts, SQL_ALERTS, ALERT_COLS, "alerts"),
                                      (b.summaries, SQL_SUMMARIES, SUMMARY_COLS, "summaries"),
                                      (b.health, SQL_HEALTH, HEALTH_COLS, "health"),
                                      (b.shadow, SQL_SHADOW, SHADOW_COLS, "shadow"),
                                      (b.acks, SQL_ACKS, ACK_COLS, "acks"),
                                      (b.dead, SQL_DEAD, DEAD_COLS, "dead")):
            if rows:
                new = len(await conn.fetch(sql, *_columns(rows, cols)))
                setattr(w, attr, new)
                if attr in ("alerts", "summaries"):
                    w.duplicates += len(rows) - new
        if b.seen:
            devs = sorted(b.seen)
            await conn.execute(SQL_SEEN, devs, [b.seen[d][0] for d in devs], [b.seen[d][1] for d in devs])
        for s in sorted(b.states, key=lambda s: (s["device"], s["broker_at"])):
            status = await conn.execute(SQL_STATE, s["device"], s["site"], s["online"], s["broker_at"], s["boot"],
                                        s["agent_version"], s["config_hash"], s["models"], s["proto"], s["lat"],
                                        s["lon"])
            w.states += status.endswith(" 1")
    return w
