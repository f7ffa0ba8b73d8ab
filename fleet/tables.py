"""Shared by the commands that read the database: where it is (``--db`` or ``--dir``), and printing."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def add_db_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help="PostgreSQL URL (default: $ROADSIDE_DB_URL, else the stack in --dir)")
    p.add_argument("--dir", type=Path, default=Path("city"), help="folder of a `roadside fleet up` (default city)")


def db_url(args: argparse.Namespace) -> str:
    if args.db:
        return args.db
    if os.environ.get("ROADSIDE_DB_URL"):
        return os.environ["ROADSIDE_DB_URL"]
    from .stack import read_info
    try:
        return read_info(args.dir)["db_url"]
    except FileNotFoundError as e:
        raise SystemExit(f"{e} (or give --db URL)") from None


def query(args: argparse.Namespace, sql: str, *params) -> list[dict]:
    import asyncio

    import asyncpg

    async def go():
        conn = await asyncpg.connect(db_url(args), timeout=10)
        try:
            return [dict(r) for r in await conn.fetch(sql, *params)]
        finally:
            await conn.close()
    try:
        return asyncio.run(go())
    except (OSError, asyncpg.PostgresError) as e:
        raise SystemExit(f"database: {type(e).__name__}: {e}") from None


def print_table(rows: list[dict], as_json: bool) -> None:
    if as_json:
        for r in rows:
            print(json.dumps(r, default=str))
        return
    if not rows:
        print("(none)")
        return
    cols = list(rows[0])
    cells = [[("" if r[c] is None else str(r[c])) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
