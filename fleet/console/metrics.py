"""``/metrics`` for Prometheus: the fleet and the ingest path as the database sees them, and
the console's own counters. Computed at scrape time (a handful of indexed queries), so the
figures are the same whichever console instance is scraped. Unauthenticated, as scrapers
are: it carries aggregates only, no pole ids; keep it on the control-room network.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from . import queries

router = APIRouter()
log = logging.getLogger("roadside.console.metrics")


class _Snapshot:
    """A collector over figures already fetched (prometheus_client collectors are synchronous)."""

    def __init__(self, fleet: dict, counters: dict, clients: int):
        self.fleet, self.counters, self.clients = fleet, counters, clients

    def collect(self):
        f = self.fleet
        g = GaugeMetricFamily("roadside_devices", "poles by state (online: birth seen and no will since)",
                              labels=["state"])
        for state in ("online", "offline", "stale"):
            g.add_metric([state], f[state])
        yield g
        yield GaugeMetricFamily("roadside_ingest_alerts_per_second", "alerts stored per second over the last 60 s",
                                value=f["alerts_60s"] / 60.0)
        lag = GaugeMetricFamily("roadside_ingest_lag_seconds", "broker receipt to database insert, alerts of the "
                                "last 60 s", labels=["quantile"])
        for q, v in (("0.5", f["lag_p50"]), ("0.95", f["lag_p95"])):
            lag.add_metric([q], float(v) if v is not None else float("nan"))
        yield lag
        yield GaugeMetricFamily("roadside_ingest_last_alert_age_seconds", "time since the newest alert was stored",
                                value=float(f["last_alert_age"]) if f["last_alert_age"] is not None else float("nan"))
        bl = GaugeMetricFamily("roadside_ingest_backlog_messages", "messages a JetStream ingest consumer has not "
                               "had acknowledged yet (pending + in flight)", labels=["consumer"])
        for consumer, n in sorted(f["backlog"].items()):
            bl.add_metric([consumer], n)
        yield bl
        dl = GaugeMetricFamily("roadside_dead_letters", "payloads refused by the ingest workers, by reason",
                               labels=["reason"])
        for reason, n in sorted(f["dead_letters"].items()):
            dl.add_metric([reason], n)
        yield dl
        c = CounterMetricFamily("roadside_console_events", "console events since start", labels=["event"])
        for name in ("login_failed", "csrf_refused", "role_refused", "live_alerts", "live_dropped", "live_bad_notify"):
            c.add_metric([name], self.counters[name])
        yield c
        yield GaugeMetricFamily("roadside_console_live_clients", "open live-feed connections", value=self.clients)


async def connect_nats(urls: list[str]):
    """A NATS connection for the backlog figures, or None (none configured, or unreachable: logged)."""
    if not urls:
        return None
    import nats

    try:
        return await nats.connect(servers=urls, connect_timeout=5, max_reconnect_attempts=-1)
    except Exception as e:  # the console works without it; /metrics then says so by the missing series
        log.warning("console: NATS unreachable (%s): /metrics without the ingest backlog", e)
        return None


async def backlog(nc) -> dict[str, float]:
    """Messages each ingest consumer has not yet had acknowledged (pending + in flight)."""
    from ..streams import HEALTH_DURABLE, HEALTH_STREAM, INGEST_DURABLE, MSGS_STREAM

    out = {}
    if nc is None:
        return out
    js = nc.jetstream(timeout=2)
    for stream, durable in ((MSGS_STREAM, INGEST_DURABLE), (HEALTH_STREAM, HEALTH_DURABLE)):
        try:
            info = await js.consumer_info(stream, durable, timeout=2)
            out[durable] = float(info.num_pending + info.num_ack_pending)
        except Exception as e:  # a leader election or a missing consumer: that series is left out
            log.warning("console: consumer %s/%s: %s", stream, durable, e)
    return out


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    st = request.app.state
    fleet = await queries.fleet_figures(st.pool, st.settings.online_after_s)
    fleet["backlog"] = await backlog(st.nats)
    reg = CollectorRegistry()
    reg.register(_Snapshot(fleet, st.counters, len(st.live.clients)))
    return Response(generate_latest(reg), media_type=CONTENT_TYPE_LATEST)
