"""``roadside fleet alerts``: stored alerts, newest first, from the database."""

from __future__ import annotations

import argparse
import datetime as dt
import re

from ..tables import add_db_args, print_table, query

_AGO = re.compile(r"^(\d+)([smhd])$")


def since(text: str) -> dt.datetime:
    """``15m``, ``2h``, ``1d`` ago, or an ISO time (UTC if no zone)."""
    m = _AGO.match(text)
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        return dt.datetime.now(dt.timezone.utc) - dt.timedelta(**{unit: int(m.group(1))})
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--since {text!r}: use 15m / 2h / 1d or an ISO time") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("alerts", help="table of stored alerts (newest first)",
                       description="Print stored alerts, newest first, filtered by time, device and kind.")
    add_db_args(p)
    p.add_argument("--since", type=since, default=since("1h"), help="15m, 2h, 1d ago or an ISO time (default 1h)")
    p.add_argument("--device", help="only this pole")
    p.add_argument("--kind", help="only this kind (noise, vehicles, congestion, level)")
    p.add_argument("--limit", type=int, default=50, help="at most this many rows (default 50)")
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    p.set_defaults(func=run)


SQL = """SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS') AS ts_utc, device, site, kind, class,
       round(confidence::numeric, 3) AS p, sensor, alert_id AS id, CASE WHEN replayed THEN 'r' ELSE '' END AS r,
       round((extract(epoch FROM ingested_at - broker_at) * 1000)::numeric, 1) AS ingest_ms
  FROM alerts WHERE ts >= $1 AND ($2::text IS NULL OR device = $2) AND ($3::text IS NULL OR kind = $3)
 ORDER BY ts DESC LIMIT $4"""


def run(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise SystemExit(f"--limit {args.limit}: must be at least 1")
    print_table(query(args, SQL, args.since, args.device, args.kind, args.limit), args.json)
    return 0
