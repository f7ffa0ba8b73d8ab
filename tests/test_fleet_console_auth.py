"""The console's access rules over real HTTP: login, roles, sessions, CSRF (issue 17).

Runs ``roadside fleet serve`` on the real city stack's PostgreSQL (tests/console_fixtures.py).
The only state changes today are login, logout and an operator's acknowledgement of an alert;
rollout start/abort (issue 16) will use the same guard, which the route walk below enforces.
"""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

pytest.register_assert_rewrite("console_fixtures")
from console_fixtures import Pole, http_session, roadside, wait_for  # noqa: E402



def _db(console, sql: str, *args):
    import asyncpg

    async def run():
        conn = await asyncpg.connect(console.db_url)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()
    return asyncio.run(run())


@pytest.fixture(scope="module")
def acked_pole(fleet_stack, console):
    """A pole with one stored alert to acknowledge."""
    pole = Pole(fleet_stack, "auth-pole-1", "auth-site")
    alert_id = pole.alert("noise", "siren", 0.9)
    c = http_session(console, "viewer")
    wait_for(lambda: any(a["id"] == alert_id for a in c.get("/api/alerts", params={"device": pole.device}).json()["alerts"]),
             10, f"alert {alert_id} stored")
    yield pole, alert_id
    pole.close()


def test_pages_redirect_to_login_and_the_api_answers_401_without_a_session(console):
    for path in ("/", "/live", "/noise", "/traffic?device=x"):
        r = httpx.get(console.url + path)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next="), path
    for path in ("/api/devices", "/api/alerts", "/api/noise/x", "/api/live", "/api/me"):
        r = httpx.get(console.url + path)
        assert r.status_code == 401, path
        assert "log in" in r.json()["detail"]


def test_a_wrong_password_is_refused_and_an_unknown_user_looks_the_same(console):
    c = httpx.Client(base_url=console.url)
    token = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text).group(1)
    name, _ = console.users["viewer"]
    wrong = c.post("/login", data={"csrf": token, "name": name, "password": "not-the-password"})
    unknown = c.post("/login", data={"csrf": token, "name": "nobody-here", "password": "not-the-password"})
    for r in (wrong, unknown):
        assert r.status_code == 401 and "Unknown user or wrong password" in r.text
    assert "roadside_session" not in c.cookies
    assert c.get("/api/me").status_code == 401


def test_login_without_the_forms_csrf_token_is_refused(console):
    name, pw = console.users["viewer"]
    c = httpx.Client(base_url=console.url)
    c.get("/login")  # the cookie half of the double submit, but no form field
    r = c.post("/login", data={"name": name, "password": pw})
    assert r.status_code == 403 and "CSRF" in r.json()["detail"]


def test_after_login_the_user_goes_to_the_page_asked_for_but_never_to_another_site(console):
    name, pw = console.users["viewer"]
    for asked, landed in (("/noise?device=a", "/noise?device=a"), ("//evil.example/x", "/"), ("https://evil.example", "/")):
        c = httpx.Client(base_url=console.url)
        token = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text).group(1)
        r = c.post("/login", data={"csrf": token, "name": name, "password": pw, "next": asked})
        assert r.status_code == 303 and r.headers["location"] == landed


def test_passwords_are_stored_as_argon2id_hashes_only(console):
    for name, pw in console.users.values():
        (row,) = _db(console, "SELECT pw_hash FROM console_users WHERE name = $1", name)
        assert row["pw_hash"].startswith("$argon2id$") and pw not in row["pw_hash"]


def test_sessions_are_stored_hashed_and_expire_when_idle(console):
    c = http_session(console, "viewer")
    assert c.get("/api/me").status_code == 200
    token = c.cookies["roadside_session"]
    stored = [bytes(r["token_sha256"]) for r in _db(console, "SELECT token_sha256 FROM console_sessions")]
    assert token.encode() not in stored and all(len(s) == 32 for s in stored)
    # Idle for longer than --session-idle-s (30 min by default): the next request is refused.
    _db(console, "UPDATE console_sessions SET last_seen = now() - interval '31 minutes' WHERE token_sha256 = "
        "sha256(convert_to($1, 'UTF8'))", token)
    assert c.get("/api/me").status_code == 401


def test_sessions_expire_after_the_maximum_age_even_when_used(console):
    c = http_session(console, "viewer")
    token = c.cookies["roadside_session"]
    _db(console, "UPDATE console_sessions SET created_at = now() - interval '13 hours', last_seen = now() "
        "WHERE token_sha256 = sha256(convert_to($1, 'UTF8'))", token)
    assert c.get("/api/me").status_code == 401


def test_logout_needs_the_csrf_token_and_ends_the_session(console):
    c = http_session(console, "viewer")
    assert c.post("/logout").status_code == 403
    assert c.get("/api/me").status_code == 200
    r = c.post("/logout", data={"csrf": c.csrf})
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert c.get("/api/me").status_code == 401


def test_a_viewer_cannot_acknowledge_an_alert_even_with_a_valid_csrf_token(console, acked_pole):
    _, alert_id = acked_pole
    c = http_session(console, "viewer")
    assert c.get("/api/me").json()["may"]["acknowledge"] is False
    r = c.post(f"/api/alerts/{alert_id}/ack", headers={"X-CSRF-Token": c.csrf})
    assert r.status_code == 403 and "operator role is required" in r.json()["detail"]
    assert not _db(console, "SELECT 1 FROM console_acks WHERE alert_id = $1", alert_id)


def test_an_operator_acknowledges_with_the_csrf_token_and_not_without_it(console, acked_pole):
    _, alert_id = acked_pole
    c = http_session(console, "operator")
    assert c.post(f"/api/alerts/{alert_id}/ack").status_code == 403  # no token
    assert c.post(f"/api/alerts/{alert_id}/ack", headers={"X-CSRF-Token": "forged"}).status_code == 403
    r = c.post(f"/api/alerts/{alert_id}/ack", headers={"X-CSRF-Token": c.csrf, "Origin": "http://evil.example"})
    assert r.status_code == 403 and "cross-origin" in r.json()["detail"]
    r = c.post(f"/api/alerts/{alert_id}/ack", headers={"X-CSRF-Token": c.csrf})
    assert r.status_code == 200 and r.json()["by"] == console.users["operator"][0]
    assert c.post("/api/alerts/auth-pole-1:9:999999/ack", headers={"X-CSRF-Token": c.csrf}).status_code == 404


def _routes(routes):
    """Every endpoint, also those of included routers (FastAPI keeps them nested)."""
    for r in routes:
        if hasattr(r, "original_router"):
            yield from _routes(r.original_router.routes)
        elif getattr(r, "methods", None):
            yield r


def test_every_state_change_goes_through_the_action_guard():
    """A non-GET route without auth.action (or the login form's check) would skip CSRF and roles:
    rollout start/abort (issue 16) must declare Depends(auth.action("operator")) like the rest."""
    from fleet.console.app import create_app
    from fleet.console.settings import ConsoleSettings

    app = create_app(ConsoleSettings(db_url="postgresql://unused@127.0.0.1:1/none"))  # no connection until started
    changes = [r for r in _routes(app.routes) if set(r.methods) - {"GET", "HEAD"}]
    assert {r.path for r in changes} >= {"/login", "/logout", "/api/alerts/{alert_id}/ack"}
    for r in changes:
        guards = [getattr(d.call, "roadside_guard", None) for d in r.dependant.dependencies]
        assert any(guards), f"{sorted(r.methods)} {r.path} changes state without auth.action()"


def test_user_cli_names_what_was_wrong(console):
    r = roadside("fleet", "user", "add", "someone", "--role", "viewer", "--password-stdin", "--db", console.db_url,
                 stdin="short\n")
    assert r.returncode == 2 and "password: at least 10 characters" in r.stderr
    name, _ = console.users["viewer"]
    r = roadside("fleet", "user", "add", name, "--role", "viewer", "--password-stdin", "--db", console.db_url,
                 stdin="long-enough-password\n")
    assert r.returncode == 2 and "exists" in r.stderr
    r = roadside("fleet", "user", "list", "--db", console.db_url)
    assert r.returncode == 0 and name in r.stdout
