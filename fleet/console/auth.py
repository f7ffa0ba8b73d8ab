"""Who may look, who may act: users, sessions, roles and the CSRF guard.

Passwords are stored as argon2id hashes (argon2-cffi). A session is a random token in an
HttpOnly cookie; the database keeps only its sha256, so a leaked table opens no session. A
session ends after ``session_idle_s`` unused or ``session_max_s`` after login, whichever
comes first. Each session carries its own CSRF token (synchroniser pattern): pages put it
in a ``<meta>`` tag and in forms, scripts send it as ``X-CSRF-Token``.

Every state change is a route that depends on ``action(role)``: logged in, same origin,
the session's CSRF token, then the role. A test walks the app's routes and fails if a
non-GET route does not go through it, so a new action (rollout start/abort, issue 16) gets
the same checks by declaring ``Depends(action("operator"))``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import HTTPException, Request

ROLES = ("viewer", "operator")
_RANK = {r: i for i, r in enumerate(ROLES)}  # an operator may do what a viewer may
SESSION_COOKIE = "roadside_session"
LOGIN_CSRF_COOKIE = "roadside_login_csrf"
CSRF_HEADER = "x-csrf-token"
_TOUCH_EVERY = dt.timedelta(seconds=60)  # last_seen is written at most once a minute per session
_hasher = PasswordHasher()  # argon2id, the library's RFC 9106 low-memory profile
_DUMMY_HASH = _hasher.hash(secrets.token_hex(8))  # unknown users cost the same time as known ones


class NotLoggedIn(Exception):
    """No valid session: pages redirect to the login form, the API answers 401."""


class UserError(ValueError):
    """A user that cannot be created or changed; the message names the field."""


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: str
    csrf: str = ""

    def may(self, role: str) -> bool:
        return _RANK[self.role] >= _RANK[role]


def _token_key(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


# ------------------------------------------------------------------------------ users

def check_user(name: str, password: str, role: str) -> None:
    if not (1 <= len(name) <= 64) or not name.isprintable() or name.strip() != name:
        raise UserError(f"name {name!r}: 1..64 printable characters, no surrounding spaces")
    if role not in ROLES:
        raise UserError(f"role {role!r}: one of {', '.join(ROLES)}")
    if len(password) < 10:
        raise UserError("password: at least 10 characters")


async def add_user(conn, name: str, password: str, role: str) -> int:
    """A new user (``UserError`` if the name is taken or a field is wrong)."""
    check_user(name, password, role)
    pw_hash = await asyncio.to_thread(_hasher.hash, password)
    row = await conn.fetchrow("INSERT INTO console_users (name, role, pw_hash) VALUES ($1, $2, $3) "
                              "ON CONFLICT (name) DO NOTHING RETURNING id", name, role, pw_hash)
    if row is None:
        raise UserError(f"name {name!r}: a user of that name exists")
    return row["id"]


async def set_password(conn, name: str, password: str) -> None:
    check_user(name, password, "viewer")
    pw_hash = await asyncio.to_thread(_hasher.hash, password)
    done = await conn.execute("UPDATE console_users SET pw_hash = $2 WHERE name = $1", name, pw_hash)
    if done.endswith(" 0"):
        raise UserError(f"name {name!r}: no such user")
    await conn.execute("DELETE FROM console_sessions s USING console_users u "
                       "WHERE s.user_id = u.id AND u.name = $1", name)  # a new password ends old sessions


async def authenticate(pool, name: str, password: str) -> User | None:
    row = await pool.fetchrow("SELECT id, name, role, pw_hash FROM console_users WHERE name = $1 AND NOT disabled", name)
    stored = row["pw_hash"] if row else _DUMMY_HASH
    try:
        await asyncio.to_thread(_hasher.verify, stored, password)
    except (VerificationError, InvalidHashError):
        return None
    if row is None:
        return None
    if _hasher.check_needs_rehash(stored):  # parameters raised since: upgrade on the next good login
        await pool.execute("UPDATE console_users SET pw_hash = $2 WHERE id = $1", row["id"],
                           await asyncio.to_thread(_hasher.hash, password))
    return User(row["id"], row["name"], row["role"])


# --------------------------------------------------------------------------- sessions

async def open_session(pool, user: User, settings) -> tuple[str, str]:
    """A new session for ``user``: (cookie token, CSRF token). Expired sessions are swept here."""
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM console_sessions WHERE created_at < now() - make_interval(secs => $1) "
                           "OR last_seen < now() - make_interval(secs => $2)",
                           float(settings.session_max_s), float(settings.session_idle_s))
        await conn.execute("INSERT INTO console_sessions (token_sha256, user_id, csrf) VALUES ($1, $2, $3)",
                           _token_key(token), user.id, csrf)
    return token, csrf


async def session_user(pool, token: str, settings) -> User | None:
    row = await pool.fetchrow(
        "SELECT u.id, u.name, u.role, s.csrf, s.created_at, s.last_seen FROM console_sessions s "
        "JOIN console_users u ON u.id = s.user_id WHERE s.token_sha256 = $1 AND NOT u.disabled", _token_key(token))
    if row is None:
        return None
    now = _now()
    if (now - row["created_at"]).total_seconds() > settings.session_max_s or \
            (now - row["last_seen"]).total_seconds() > settings.session_idle_s:
        await close_session(pool, token)
        return None
    if now - row["last_seen"] > _TOUCH_EVERY:
        await pool.execute("UPDATE console_sessions SET last_seen = now() WHERE token_sha256 = $1", _token_key(token))
    return User(row["id"], row["name"], row["role"], row["csrf"])


async def close_session(pool, token: str) -> None:
    await pool.execute("DELETE FROM console_sessions WHERE token_sha256 = $1", _token_key(token))


# ----------------------------------------------------------------------- dependencies

async def current_user(request: Request) -> User:
    """The logged-in user (cached on the request), or ``NotLoggedIn``."""
    if "user" in request.scope:
        return request.scope["user"]
    token = request.cookies.get(SESSION_COOKIE)
    user = await session_user(request.app.state.pool, token, request.app.state.settings) if token else None
    if user is None:
        raise NotLoggedIn()
    request.scope["user"] = user
    return user


def require(role: str = "viewer"):
    """Dependency: a logged-in user holding at least ``role`` (403 otherwise)."""
    async def dep(request: Request) -> User:
        user = await current_user(request)
        if not user.may(role):
            raise HTTPException(403, f"the {role} role is required (you are {user.name}, {user.role})")
        return user
    return dep


def same_origin(request: Request) -> None:
    """A browser sends Origin on every POST; one from another site is refused outright."""
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
        raise HTTPException(403, f"cross-origin request from {origin} refused")


async def _sent_csrf(request: Request) -> str:
    sent = request.headers.get(CSRF_HEADER, "")
    if not sent and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        sent = str((await request.form()).get("csrf", ""))  # Starlette caches the parsed form for the route
    return sent


def action(role: str = "operator"):
    """Dependency for every state change: logged in, same origin, the session's CSRF token, ``role``."""
    async def dep(request: Request) -> User:
        user = await current_user(request)
        same_origin(request)
        sent = await _sent_csrf(request)
        if not sent or not hmac.compare_digest(sent, user.csrf):
            request.app.state.counters["csrf_refused"] += 1
            raise HTTPException(403, "CSRF token missing or wrong: reload the page and try again")
        if not user.may(role):
            request.app.state.counters["role_refused"] += 1
            raise HTTPException(403, f"the {role} role is required (you are {user.name}, {user.role})")
        return user
    dep.roadside_guard = f"action:{role}"
    return dep


async def login_csrf(request: Request) -> None:
    """Login has no session yet: a double-submit cookie stands in for the session's token."""
    same_origin(request)
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    sent = await _sent_csrf(request)
    if not cookie or not hmac.compare_digest(sent, cookie):
        request.app.state.counters["csrf_refused"] += 1
        raise HTTPException(403, "login form expired (CSRF check): reload the login page")
login_csrf.roadside_guard = "login"


def login_redirect(request: Request) -> str:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return "/login?next=" + quote(here, safe="")


def safe_next(target: str | None) -> str:
    """Only a local path may follow a login (no open redirect to another site)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"
