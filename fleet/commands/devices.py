"""``roadside fleet devices``: the poles the city knows, from the database."""

from __future__ import annotations

import argparse

from ..tables import add_db_args, print_table, query


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("devices", help="table of poles: site, online, last seen, boot, models",
                       description="Print every pole in the city database: site, online/offline (retained state "
                       "and will), last seen, boot, agent version, config hash and the model per task.")
    add_db_args(p)
    p.add_argument("--site", help="only this site")
    p.add_argument("--offline", action="store_true", help="only poles that are offline")
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    p.set_defaults(func=run)


SQL = """SELECT device, site, CASE WHEN online THEN 'online' ELSE 'offline' END AS state,
       to_char(last_seen AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS last_seen_utc, boot,
       agent_version AS agent, config_hash AS config,
       (SELECT string_agg(k || '=' || coalesce(v->>'name', '?') || ':' || coalesce(v->>'version', '?') || '@' ||
                          left(coalesce(v->>'sha256', ''), 8), ' ' ORDER BY k) FROM jsonb_each(models) AS m(k, v)) AS models
  FROM devices WHERE ($1::text IS NULL OR site = $1) AND (NOT $2 OR NOT online) ORDER BY site, device"""


def run(args: argparse.Namespace) -> int:
    rows = query(args, SQL, args.site, args.offline)
    print_table(rows, args.json)
    return 0
