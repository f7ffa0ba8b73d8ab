"""The console's JSON API and /metrics over real HTTP, and the pole's new ``device.location``.

Data comes in as a pole sends it (tests/console_fixtures.py ``Pole`` through the stack's NATS
MQTT listener and the real ingest workers); the location in the retained state message is
checked on a real ``roadside agent`` too.
"""

from __future__ import annotations

import re
import time

import httpx
import pytest

pytest.register_assert_rewrite("console_fixtures")
from console_fixtures import Pole, http_session, wait_for  # noqa: E402



@pytest.fixture(scope="module")
def api_pole(fleet_stack, console):
    pole = Pole(fleet_stack, "api-pole-1", "api-site", loc=(48.1374, 11.5755), tasks=("noise", "congestion"))
    now = int(time.time() * 1000)
    sums = [pole.summary(now - k * 10_000, 65.0 + k) for k in range(5)]
    ids = {"noise": pole.alert("noise", "siren", 0.9, ts_ms=now - 5_000),
           "level": pole.alert("level", "laeq_day", 1.0, ts_ms=now - 4_000, metrics={"laeq": 71.0, "lim": 70.0}),
           "congestion": pole.alert("congestion", "congested", 0.8, ts_ms=now - 3_000, sensor="loop1",
                                    metrics={"speed": 21.4})}
    c = http_session(console, "viewer")
    wait_for(lambda: len(c.get("/api/alerts", params={"device": pole.device}).json()["alerts"]) == 3, 15, "3 alerts")
    wait_for(lambda: len(c.get(f"/api/noise/{pole.device}", params={"hours": 1}).json()["summaries"]) == 5, 15,
             "5 summaries")
    yield pole, sums, ids, c
    pole.close()


def test_devices_carry_site_state_models_and_the_location_from_the_state_message(api_pole):
    pole, _, _, c = api_pole
    d = next(d for d in c.get("/api/devices").json()["devices"] if d["id"] == pole.device)
    assert (d["site"], d["online"], d["boot"], d["lat"], d["lon"]) == ("api-site", True, 1, 48.1374, 11.5755)
    assert set(d["models"]) == {"noise", "congestion"} and d["config_hash"] == pole.origin.config_hash


def test_noise_api_returns_the_summaries_and_only_the_noise_and_level_alerts(api_pole):
    pole, sums, ids, c = api_pole
    d = c.get(f"/api/noise/{pole.device}", params={"hours": 1}).json()
    assert [s["laeq"] for s in d["summaries"]] == [69.0, 68.0, 67.0, 66.0, 65.0]  # oldest first
    assert all(s["lim"] == 70.0 and s["per"] == "day" and s["s"] == "mic0" for s in d["summaries"])
    assert sorted(a["id"] for a in d["alerts"]) == sorted([ids["noise"], ids["level"]])


def test_traffic_api_returns_congestion_forecasts_with_their_speed(api_pole):
    pole, _, ids, c = api_pole
    d = c.get(f"/api/traffic/{pole.device}").json()
    assert [(a["id"], a["c"], a["speed"], a["s"]) for a in d["alerts"]] == [(ids["congestion"], "congested", 21.4, "loop1")]
    assert d["states"][:3] == ["free", "slowed", "congested"] and d["sensors"] == ["loop1"]


def test_bad_requests_get_an_error_naming_what_was_wrong(api_pole):
    _, _, _, c = api_pole
    r = c.get("/api/noise/no-such-pole")
    assert r.status_code == 404 and "no-such-pole" in r.json()["detail"]
    r = c.get("/api/noise/bad.id")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["path", "device"]
    r = c.get("/api/alerts", params={"kind": "weather"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "kind"]
    r = c.get("/api/noise/api-pole-1", params={"hours": -1})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "hours"]


def test_metrics_report_devices_online_ingest_rate_and_lag(console, api_pole):
    text = httpx.get(console.url + "/metrics").text  # scrapers do not log in
    online = float(re.search(r'^roadside_devices\{state="online"\} (\S+)$', text, re.M).group(1))
    rate = float(re.search(r"^roadside_ingest_alerts_per_second (\S+)$", text, re.M).group(1))
    p95 = float(re.search(r'^roadside_ingest_lag_seconds\{quantile="0.95"\} (\S+)$', text, re.M).group(1))
    backlog = float(re.search(r'^roadside_ingest_backlog_messages\{consumer="ingest"\} (\S+)$', text, re.M).group(1))
    assert online >= 1 and rate > 0 and 0 <= p95 < 60 and backlog >= 0
    assert "roadside_console_live_clients" in text and "api-pole-1" not in text  # aggregates only


def test_a_pole_location_is_validated_and_named_by_its_dotted_key(tmp_path):
    import yaml

    from agent.config import load_config
    from agent.schema import ConfigError

    raw = yaml.safe_load(open("firmware_configs/test.yaml"))
    for bad, key in (({"lat": 91.0, "lon": 0.0}, "device.location.lat"), ({"lat": 0, "lon": 0, "alt": 3}, "device.location.alt")):
        raw["device"]["location"] = bad
        path = tmp_path / "agent.yaml"
        path.write_text(yaml.safe_dump(raw))
        with pytest.raises(ConfigError) as e:
            load_config(path)
        assert key in str(e.value)


def test_a_real_agent_sends_its_location_in_the_retained_state(tmp_path, noise_model):
    from agent_fixtures import AgentProcess, Broker, Collector, write_agent_config

    sensors, city = Broker(tmp_path / "sensors"), Broker(tmp_path / "city")
    collector = Collector(city.port)
    agent = AgentProcess(write_agent_config(tmp_path / "agent", noise_model, sensors.port, city.port,
                                            **{"device.location": {"lat": 52.520008, "lon": 13.404954}}),
                         tmp_path / "agent.log")
    try:
        state = collector.wait_for(lambda col: [p for p in col.payloads("/state") if p.get("online")], 60,
                                   "the agent's birth message")
        assert state[-1]["loc"] == {"lat": 52.52001, "lon": 13.40495}
    finally:
        agent.stop()
        collector.close()
        sensors.stop()
        city.stop()


def _live_clients(console) -> float:
    text = httpx.get(console.url + "/metrics").text
    return float(re.search(r"^roadside_console_live_clients (\S+)$", text, re.M).group(1))


def test_live_stream_says_hello_then_delivers_a_stored_alert_and_forgets_a_closed_client(console, api_pole):
    import json

    pole, _, _, c = api_pole
    before = _live_clients(console)
    with c.stream("GET", "/api/live", timeout=10) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        assert next(lines) == "event: hello"
        assert wait_for(lambda: _live_clients(console) == before + 1, 5, "the client counted")
        alert_id = pole.alert("noise", "car_horn", 0.77)
        for line in lines:
            if line.startswith("data: [") and alert_id in line:
                (got,) = [a for a in json.loads(line[6:]) if a["id"] == alert_id]
                break
    assert (got["device"], got["k"], got["c"], got["p"], got["s"]) == (pole.device, "noise", "car_horn", 0.77, "mic0")
    wait_for(lambda: _live_clients(console) == before, 10, "the closed client forgotten")
