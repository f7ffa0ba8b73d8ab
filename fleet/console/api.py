"""The JSON API behind every page (viewer role), the live feed, and the operator's actions.

GET  /api/me                        who is logged in, and what they may do
GET  /api/devices                   every pole (the fleet page filters in the browser)
GET  /api/alerts?device&kind&limit  the last alerts stored
GET  /api/live                      server-sent events: "hello", then "alerts" batches as stored
GET  /api/noise/{device}?hours      level summaries and the noise/level alerts of that period
GET  /api/traffic/{device}?hours    congestion alerts (state forecasts) per detector
GET  /api/rollouts                  the rollouts, newest first (state, stage, poles promoted, ever ran)
GET  /api/rollouts/{id}             one rollout: bounds, the gate that fired, poles per stage and status, events
POST /api/alerts/{id}/ack           operator: acknowledge an alert (CSRF + role: auth.action)
POST /api/rollouts/{id}/abort       operator: ask the rollout's controller to abort it and put every pole back
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent

from . import auth, queries

router = APIRouter(prefix="/api")
viewer = Depends(auth.require("viewer"))
KINDS = Literal["noise", "vehicles", "congestion", "level"]
CONGESTION_STATES = ["free", "slowed", "congested"]  # the shipped congestion model's labels, in order
DeviceId = Path(pattern=r"^[A-Za-z0-9_-]{1,32}$", description="pole id (device.id in its config)")


def _period(hours: float) -> tuple[dt.datetime, dt.datetime]:
    t1 = dt.datetime.now(dt.timezone.utc)
    return t1 - dt.timedelta(hours=hours), t1


async def _known(request: Request, device: str) -> None:
    if not await queries.device_exists(request.app.state.pool, device):
        raise HTTPException(404, f"no pole {device!r} in the fleet database")


@router.get("/me")
async def me(user: auth.User = viewer):
    return {"name": user.name, "role": user.role, "may": {"acknowledge": user.may("operator"),
                                                          "rollouts": user.may("operator")}}


@router.get("/devices")
async def devices(request: Request, _: auth.User = viewer):
    st = request.app.state
    devs = await queries.devices(st.pool, st.settings.online_after_s)
    return {"devices": devs, "sites": sorted({d["site"] for d in devs}),
            "counts": {"online": sum(d["online"] for d in devs), "offline": sum(not d["online"] for d in devs)}}


@router.get("/alerts")
async def alerts(request: Request, device: str | None = Query(None, max_length=32), kind: KINDS | None = None,
                 limit: int = Query(100, ge=1, le=1000), _: auth.User = viewer):
    return {"alerts": await queries.recent_alerts(request.app.state.pool, limit, device, kind)}


@router.get("/live", response_class=EventSourceResponse)
async def live(request: Request, user: auth.User = viewer):
    """``hello`` (server time, for the page's latency), then each stored batch as ``alerts``.
    A reconnecting EventSource sends Last-Event-ID (ms of the last row stored): what was
    stored since comes first (the page drops ids it already has)."""
    st = request.app.state
    q = st.live.subscribe()
    st.counters["live_clients"] += 1
    try:
        yield ServerSentEvent(event="hello", data={"now": int(time.time() * 1000), "user": user.name}, retry=1000)
        last = request.headers.get("last-event-id", "")
        if last.isdigit():
            since = dt.datetime.fromtimestamp(int(last) / 1000, dt.timezone.utc)
            missed = await queries.recent_alerts(st.pool, 500, since=since - dt.timedelta(milliseconds=1))
            if missed:
                yield ServerSentEvent(event="alerts", data=missed[::-1], id=str(missed[0]["stored"]))
        while True:
            batch = await q.get()
            yield ServerSentEvent(event="alerts", data=batch, id=str(max(a["stored"] for a in batch)))
    finally:
        st.live.unsubscribe(q)
        st.counters["live_clients"] -= 1


@router.get("/noise/{device}")
async def noise(request: Request, device: str = DeviceId, hours: float = Query(24, gt=0, le=24 * 31),
                _: auth.User = viewer):
    await _known(request, device)
    t0, t1 = _period(hours)
    pool = request.app.state.pool
    summaries = await queries.level_summaries(pool, device, t0, t1)
    return {"device": device, "t0": queries.ms(t0), "t1": queries.ms(t1), "summaries": summaries,
            "sensors": sorted({s["s"] for s in summaries}),
            "alerts": await queries.alerts_in(pool, device, ["noise", "level"], t0, t1)}


@router.get("/traffic/{device}")
async def traffic(request: Request, device: str = DeviceId, hours: float | None = Query(None, gt=0, le=24 * 31),
                  _: auth.User = viewer):
    """Without ``hours``: the pole's latest 500 congestion alerts, whenever their windows ended
    (a replayed detector's readings carry the recording's own time)."""
    await _known(request, device)
    pool = request.app.state.pool
    if hours is None:
        rows = await queries.latest_alerts(pool, device, "congestion", 500)
        t0 = t1 = None
    else:
        t0, t1 = _period(hours)
        rows = await queries.alerts_in(pool, device, ["congestion"], t0, t1)
    for a in rows:
        speed = a["m"].get("speed")
        a["speed"] = round(float(speed), 1) if isinstance(speed, (int, float)) else None
    states = CONGESTION_STATES + sorted({a["c"] for a in rows} - set(CONGESTION_STATES))
    return {"device": device, "t0": queries.ms(t0), "t1": queries.ms(t1), "alerts": rows,
            "sensors": sorted({a["s"] for a in rows}), "states": states}


@router.get("/rollouts")
async def rollouts(request: Request, _: auth.User = viewer):
    return {"rollouts": await queries.rollouts(request.app.state.pool)}


@router.get("/rollouts/{rollout_id}")
async def rollout(request: Request, rollout_id: int = Path(ge=1, le=2**31 - 1), _: auth.User = viewer):
    out = await queries.rollout(request.app.state.pool, rollout_id)
    if out is None:
        raise HTTPException(404, f"no rollout {rollout_id}")
    return out


# ----------------------------------------------------------------------------- actions
# Every state change: Depends(auth.action(role)). Rollouts are started from the CLI (it needs the
# operator's private key, which the console never holds); the console may abort one.

@router.post("/rollouts/{rollout_id}/abort")
async def abort_rollout(request: Request, rollout_id: int = Path(ge=1, le=2**31 - 1),
                        user: auth.User = Depends(auth.action("operator"))):
    try:
        state = await queries.abort_rollout(request.app.state.pool, rollout_id, user.name)
    except LookupError:
        raise HTTPException(404, f"no rollout {rollout_id}") from None
    if state != "running":
        raise HTTPException(409, f"rollout {rollout_id} is {state}: nothing to abort")
    return {"id": rollout_id, "abort_requested_by": user.name}

@router.post("/alerts/{alert_id}/ack")
async def acknowledge(request: Request, alert_id: str = Path(max_length=80, pattern=r"^[A-Za-z0-9_-]{1,32}:\d+:\d+$"),
                      user: auth.User = Depends(auth.action("operator"))):
    done = await queries.acknowledge(request.app.state.pool, alert_id, user.name)
    if done is None:
        raise HTTPException(404, f"no alert {alert_id!r}")
    return done
