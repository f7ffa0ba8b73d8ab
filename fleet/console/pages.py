"""The HTML pages: login, logout, and the shells the page scripts fill from the JSON API.

A page is one ``Page`` in ``PAGES`` (path, nav label, template); the nav is drawn from it.
Pages need the viewer role; what an operator may do more is decided per action (``auth.action``).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from . import auth

HERE = Path(__file__).parent
STATIC = HERE / "static"


@dataclass(frozen=True)
class Page:
    path: str
    label: str
    template: str


PAGES = [
    Page("/", "Fleet", "fleet.html"),
    Page("/live", "Live alerts", "live.html"),
    Page("/noise", "Noise", "noise.html"),
    Page("/traffic", "Traffic", "traffic.html"),
    # Rollouts (issue 16): JSON under /api/rollouts; abort is declared with Depends(auth.action("operator")),
    # so CSRF and the operator role are checked as for every state change.
    Page("/rollouts", "Rollouts", "rollouts.html"),
]


def _static_versions() -> dict[str, str]:
    """File -> first 10 hex of its sha256: URLs change when a file does, so caches never serve an old one."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:10] for p in STATIC.iterdir() if p.is_file()}


templates = Jinja2Templates(directory=str(HERE / "templates"))
_VERSIONS = _static_versions()
templates.env.globals["static"] = lambda name: f"/static/{name}?v={_VERSIONS[name]}"
templates.env.globals["nav"] = PAGES

router = APIRouter()


def _render(request: Request, page: Page, user: auth.User, **extra) -> HTMLResponse:
    return templates.TemplateResponse(request, page.template,
                                      {"user": user, "title": page.label, "active": page.path, **extra})


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def fleet_page(request: Request, user: auth.User = Depends(auth.require("viewer"))):
    return _render(request, PAGES[0], user)


@router.get("/live", response_class=HTMLResponse, include_in_schema=False)
async def live_page(request: Request, user: auth.User = Depends(auth.require("viewer"))):
    return _render(request, PAGES[1], user, can_ack=user.may("operator"))


@router.get("/noise", response_class=HTMLResponse, include_in_schema=False)
async def noise_page(request: Request, device: str = "", user: auth.User = Depends(auth.require("viewer"))):
    return _render(request, PAGES[2], user, device=device)


@router.get("/traffic", response_class=HTMLResponse, include_in_schema=False)
async def traffic_page(request: Request, device: str = "", user: auth.User = Depends(auth.require("viewer"))):
    return _render(request, PAGES[3], user, device=device)


@router.get("/rollouts", response_class=HTMLResponse, include_in_schema=False)
async def rollouts_page(request: Request, id: str = "", user: auth.User = Depends(auth.require("viewer"))):
    return _render(request, PAGES[4], user, rollout_id=id if id.isdigit() else "", can_abort=user.may("operator"))


# ------------------------------------------------------------------------ login, logout

def _login_form(request: Request, status: int = 200, error: str = "", name: str = "", next_: str = "/"):
    token = request.cookies.get(auth.LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(32)
    resp = templates.TemplateResponse(request, "login.html", {"user": None, "title": "Log in", "error": error,
                                                              "name": name, "next": auth.safe_next(next_),
                                                              "login_csrf": token}, status_code=status)
    resp.set_cookie(auth.LOGIN_CSRF_COOKIE, token, max_age=3600, httponly=True, samesite="strict",
                    secure=request.app.state.settings.cookie_secure, path="/login")
    return resp


@router.get("/login", response_class=HTMLResponse, include_in_schema=False)
async def login_page(request: Request, next: str = "/"):
    try:
        await auth.current_user(request)
        return RedirectResponse(auth.safe_next(next), 303)
    except auth.NotLoggedIn:
        return _login_form(request, next_=next)


@router.post("/login", include_in_schema=False, dependencies=[Depends(auth.login_csrf)])
async def login(request: Request, name: str = Form(max_length=64), password: str = Form(max_length=1024),
                next: str = Form("/")):
    state = request.app.state
    user = await auth.authenticate(state.pool, name, password)
    if user is None:
        state.counters["login_failed"] += 1
        return _login_form(request, 401, "Unknown user or wrong password.", name, next)
    token, _ = await auth.open_session(state.pool, user, state.settings)
    resp = RedirectResponse(auth.safe_next(next), 303)
    resp.set_cookie(auth.SESSION_COOKIE, token, max_age=state.settings.session_max_s, httponly=True,
                    samesite="lax", secure=state.settings.cookie_secure, path="/")
    resp.delete_cookie(auth.LOGIN_CSRF_COOKIE, path="/login")
    return resp


@router.post("/logout", include_in_schema=False)
async def logout(request: Request, user: auth.User = Depends(auth.action("viewer"))):
    await auth.close_session(request.app.state.pool, request.cookies[auth.SESSION_COOKIE])
    resp = RedirectResponse("/login", 303)
    resp.delete_cookie(auth.SESSION_COOKIE, path="/")
    return resp
