"""The simulated poles: the agent's wire format, seeded, a will that fires when the network drops."""

from __future__ import annotations

import asyncio
import json

from fleet import records
from fleet.commands.simulate import fleet_names
from fleet.simulator import SimConfig, Simulator
from fleet_fixtures import sql, wait_for


def _sim(devices: dict[str, tuple[str, str]], ports: list[int], seed: int = 7, rate: float = 20.0) -> Simulator:
    return Simulator(SimConfig(devices=devices, ports=ports, rate=rate, seed=seed, health_every_s=1.0))


def test_the_same_seed_makes_the_same_fleet_and_payloads_the_agents_schema_accepts():
    names = fleet_names(5, 2)
    devices = {d: (s, "pw") for d, s in names.items()}

    def content(sim: Simulator) -> list:
        out = []
        for p in sim.poles:
            p.make_alert()
            topic, payload, _ = p.outbox[p.seq]
            row = records.alert_row(records.parse_subject(topic.replace("/", ".")), payload, records.dt.datetime.now(
                records.UTC))
            out.append((row["device"], row["alert_id"], row["class"], row["confidence"], p.loc["lat"]))
        return out

    async def both():
        return content(_sim(devices, [1])), content(_sim(devices, [1])), content(_sim(devices, [1], seed=8))
    a, b, c = asyncio.run(both())
    assert a == b and a != c
    assert [x[1] for x in a] == [f"{d}:1:1" for d in sorted(names)]


def test_simulated_poles_are_stored_go_offline_when_their_network_drops_and_come_back(fleet_stack):
    names = fleet_names(6, 2, prefix="simt")
    pw = fleet_stack.add_devices(names)

    async def run() -> tuple[Simulator, list[str]]:
        await asyncio.sleep(0.5)
        sim = _sim({d: (s, pw[d]) for d, s in names.items()}, fleet_stack.mqtt_ports)
        await sim.start(30)
        await sim.produce(3)
        await sim.drain(20)
        dropped = [p.device for p in sim.poles[:2] if p.drop(away_s=6.0)]
        await asyncio.to_thread(wait_for, lambda: len(sql(
            fleet_stack, "SELECT 1 FROM devices WHERE device = ANY($1) AND NOT online", dropped)) == 2, 30,
            "the dropped poles' wills")
        await asyncio.to_thread(wait_for, lambda: len(sql(
            fleet_stack, "SELECT 1 FROM devices WHERE device = ANY($1) AND online", dropped)) == 2, 30,
            "the dropped poles back online")
        await sim.stop()
        return sim, dropped
    sim, dropped = asyncio.run(run())
    assert len(dropped) == 2 and sim.stats.connects >= 8  # six, and the two that came back
    acked = sim.stats.acked
    rows = wait_for(lambda: (r := sql(fleet_stack, "SELECT alert_id FROM alerts WHERE device LIKE 'simt-%'")) and
                    len(r) >= len(acked) and r, 20, "every acknowledged alert stored")
    assert {r["alert_id"] for r in rows} == acked and len(rows) == len(acked) > 20
    devs = wait_for(lambda: (r := sql(fleet_stack, "SELECT * FROM devices WHERE device LIKE 'simt-%' AND NOT online"))
                    and len(r) == 6 and r, 20, "all six offline after the clean stop")
    assert all(json.loads(d["models"])["noise"]["name"] == "noise" and d["lat"] is not None for d in devs)
    assert sql(fleet_stack, "SELECT count(*) AS n FROM health WHERE device LIKE 'simt-%'")[0]["n"] >= 6
