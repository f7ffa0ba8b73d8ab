"""``create_app(settings)``: the console as an ASGI app (uvicorn runs it; the tests too).

At start: a connection pool, the migrations (idempotent: the console may be the first to
reach a new database), the live feed's LISTEN. Every response carries a Content-Security-Policy
that allows scripts, styles and connections to this origin only: nothing is fetched from the
internet, and an injected inline script would not run.
"""

from __future__ import annotations

import collections
import contextlib
import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from . import api, auth, metrics, pages
from .live import LiveFeed
from .settings import ConsoleSettings

log = logging.getLogger("roadside.console")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def create_app(settings: ConsoleSettings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        import asyncpg

        from .. import db

        app.state.pool = await asyncpg.create_pool(settings.db_url, min_size=1, max_size=settings.pool_max)
        async with app.state.pool.acquire() as conn:
            applied = await db.migrate(conn)
        if applied:
            log.info("console: applied migrations %s", ", ".join(applied))
        app.state.live = LiveFeed(settings.db_url, app.state.pool, settings.live_queue, app.state.counters)
        app.state.live.start()
        app.state.nats = await metrics.connect_nats(settings.nats_urls)
        try:
            yield
        finally:
            await app.state.live.stop()
            if app.state.nats is not None:
                await app.state.nats.close()
            await app.state.pool.close()

    app = FastAPI(title="roadside console", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json")
    app.state.settings = settings
    app.state.counters = collections.Counter()
    app.include_router(pages.router)
    app.include_router(api.router)
    app.include_router(metrics.router)
    app.mount("/static", StaticFiles(directory=pages.STATIC), name="static")

    @app.exception_handler(auth.NotLoggedIn)
    async def not_logged_in(request: Request, _exc: auth.NotLoggedIn):
        if request.url.path.startswith("/api/") or request.method != "GET":
            return JSONResponse({"detail": "log in first (POST /login)"}, status_code=401)
        return RedirectResponse(auth.login_redirect(request), 303)

    @app.middleware("http")
    async def headers(request: Request, call_next):
        resp = await call_next(request)
        resp.headers.setdefault("Content-Security-Policy", CSP)
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Referrer-Policy", "same-origin")
        if request.url.path.startswith("/api/") or resp.headers.get("content-type", "").startswith("text/html"):
            resp.headers.setdefault("Cache-Control", "no-store")  # pages and data are per user and live
        elif request.url.path.startswith("/static/") and request.url.query.startswith("v="):
            resp.headers["Cache-Control"] = "public, max-age=31536000, immutable"  # versioned by content hash
        return resp

    return app
