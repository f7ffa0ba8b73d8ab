"""The console's rollouts API: list, one rollout, abort for operators only (CSRF and role checked)."""

from __future__ import annotations

import pytest

pytest.register_assert_rewrite("console_fixtures")
from console_fixtures import http_session, seed_rollouts  # noqa: E402


@pytest.fixture(scope="module")
def seeded(console):
    return seed_rollouts(console.db_url, "api-ro")


def test_the_list_and_one_rollout_with_its_stages_gate_and_events(console, seeded):
    api = http_session(console, "viewer")
    rows = {r["id"]: r for r in api.get("/api/rollouts").json()["rollouts"]}
    assert rows[seeded["completed"]]["state"] == "completed" and rows[seeded["completed"]]["promoted"] == 10
    assert rows[seeded["halted"]]["ever_ran"] == 0
    d = api.get(f"/api/rollouts/{seeded['halted']}").json()
    assert d["rollout"]["gate"]["gate"] == "agreement" and d["rollout"]["bounds"]["max_disagreement"] == 0.09
    assert [s["poles"] for s in d["stages"]] == [1, 4, 5] and d["stages"][0]["fraction"] == pytest.approx(0.1)
    assert {e["kind"] for e in d["events"]} >= {"started", "halted"}
    assert isinstance(d["rollout"]["created_at"], int)  # times as UTC ms, as the rest of the API
    assert api.get("/api/rollouts/999999").status_code == 404
    assert api.get("/api/rollouts/x").status_code == 422


def test_only_an_operator_with_the_sessions_csrf_token_may_abort(console, seeded):
    rid = seeded["running"]
    viewer = http_session(console, "viewer")
    r = viewer.post(f"/api/rollouts/{rid}/abort", headers={"X-CSRF-Token": viewer.csrf})
    assert r.status_code == 403
    op = http_session(console, "operator")
    assert op.post(f"/api/rollouts/{rid}/abort").status_code == 403  # no CSRF token
    r = op.post(f"/api/rollouts/{rid}/abort", headers={"X-CSRF-Token": op.csrf})
    assert r.status_code == 200, r.text
    name = console.users["operator"][0]
    d = op.get(f"/api/rollouts/{rid}").json()
    assert d["rollout"]["abort_requested_by"] == name
    assert any(e["kind"] == "abort_requested" and e["actor"] == name for e in d["events"])
    r = op.post(f"/api/rollouts/{seeded['completed']}/abort", headers={"X-CSRF-Token": op.csrf})
    assert r.status_code == 409 and "completed" in r.json()["detail"]
