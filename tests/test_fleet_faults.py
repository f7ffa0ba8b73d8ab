"""Exactly-once storage while things break: the bench's fault run, small, on its own stack; and a
worker that starts while PostgreSQL is down.

60 simulated poles publish 100 alerts/s for 24 s while the NATS node leading ``$MQTT_msgs`` is
killed with -9 (and restarted), an ingest worker is killed with -9 (and restarted), PostgreSQL
restarts, and 50 poles lose their network and come back. Every alert the broker acknowledged
is in the database exactly once (counted from the database itself).
"""

from __future__ import annotations

import asyncio
import shutil
import time

from fleet.bench import run_bench
from fleet_fixtures import Pole, _check_engines, alert, sql, stack_folder, wait_for


def test_every_acknowledged_alert_is_stored_exactly_once_across_node_worker_and_db_faults():
    _check_engines()
    folder = stack_folder("roadside-faults-")
    try:
        r = asyncio.run(run_bench(folder, devices=60, seconds=24, rate=100, faults=True))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert r["left_running"] == [], r
    what = [f["what"] for f in r["faults"]]
    assert any(w.startswith("kill -9 NATS") for w in what) and "kill -9 ingest worker w1" in what
    assert "PostgreSQL restarted" in what and any("poles' network dropped" in w for w in what), what
    assert r["produced"] > 1500 and r["unacked"] == 0, r
    assert (r["lost"], r["duplicates_stored"]) == (0, 0), r
    assert r["stored"] == r["produced"] == r["rows"], r
    assert r["reconnects"] >= 40, r  # the dropped poles (and those on the killed node) came back


def test_a_worker_started_while_postgres_is_down_waits_for_it_then_ingests(make_stack):
    stack = make_stack(nodes=1, workers=0)
    stack.pg.stop()
    worker = stack.start_worker("late")
    pole = Pole(stack, "late-a")
    for seq in (1, 2, 3):
        pole.publish("alert/noise", alert("late-a", seq))  # acknowledged by NATS, waiting in the stream
    time.sleep(3)
    assert worker.alive(), worker.log.read_text()  # it waits, it does not exit
    stack.pg.start()
    rows = wait_for(lambda: (r := sql(stack, "SELECT alert_id FROM alerts")) and len(r) == 3 and r, 30,
                    "the 3 alerts after PostgreSQL came up")
    assert sorted(r["alert_id"] for r in rows) == ["late-a:1:1", "late-a:1:2", "late-a:1:3"]
    pole.close()
