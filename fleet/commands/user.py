"""``roadside fleet user add|list|passwd|remove``: the console's users (argon2-hashed passwords)."""

from __future__ import annotations

import argparse
import getpass
import sys

from .serve import add_db_args, db_url


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("user", help="console users: add, list, passwd, remove",
                       description="Console users and their roles: a viewer sees everything, an operator may "
                       "also act (acknowledge alerts; start and abort rollouts).")
    usub = p.add_subparsers(dest="user_command", required=True)
    add = usub.add_parser("add", help="a new user")
    add.add_argument("name")
    add.add_argument("--role", choices=["viewer", "operator"], required=True)
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin (one line)")
    pw = usub.add_parser("passwd", help="a new password (ends the user's sessions)")
    pw.add_argument("name")
    pw.add_argument("--password-stdin", action="store_true", help="read the password from stdin (one line)")
    ls = usub.add_parser("list", help="users and roles")
    rm = usub.add_parser("remove", help="delete a user (and their sessions)")
    rm.add_argument("name")
    for q in (add, pw, ls, rm):
        add_db_args(q)
        q.set_defaults(func=run)


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if not sys.stdin.isatty():
        raise ValueError("no terminal to ask for the password: use --password-stdin")
    first = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != first:
        raise ValueError("the two passwords differ")
    return first


def run(args: argparse.Namespace) -> int:
    from fleet.stack import run_async

    return run_async(_run(args, db_url(args)))


async def _run(args: argparse.Namespace, url: str) -> int:
    from fleet import db
    from fleet.console import auth

    conn = await db.connect(url)
    try:
        await db.migrate(conn)
        if args.user_command == "add":
            await auth.add_user(conn, args.name, _password(args), args.role)
            print(f"user {args.name} added ({args.role})")
        elif args.user_command == "passwd":
            await auth.set_password(conn, args.name, _password(args))
            print(f"password of {args.name} changed; their sessions ended")
        elif args.user_command == "remove":
            done = await conn.execute("DELETE FROM console_users WHERE name = $1", args.name)
            if done.endswith(" 0"):
                raise ValueError(f"no user {args.name!r}")
            print(f"user {args.name} removed")
        else:
            for r in await conn.fetch("SELECT name, role, disabled, created_at FROM console_users ORDER BY name"):
                print(f"{r['name']:24s} {r['role']:9s} {'disabled' if r['disabled'] else 'active':9s} "
                      f"{r['created_at']:%Y-%m-%d %H:%M}")
    finally:  # auth.UserError is a ValueError: `roadside` prints it without a traceback
        await conn.close()
    return 0
