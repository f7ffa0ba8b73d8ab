"""The rollout tables (``0003_rollouts.sql``): every read and write the controller, the CLI and the console make.

Statuses of a target (one pole in one rollout) and what moves them:

    pending --send s--> shadow_sent --ack shadowing--> shadowing --send p--> promote_sent --ack applied--> promoted
    pending (its stage passed while it was away) --send m--> model_sent --ack applied--> promoted
    ack refused / rolled_back to s or m --> failed;  ack unchanged to s or m --> unchanged (ran it already)
    halting: pending --> skipped;  *_sent, shadowing, promoted --send a--> abort_sent
             --ack aborted--> aborted;  --ack refused (no candidate: it was promoted, or never got it)-->
             --send b--> rollback_sent --ack applied / unchanged--> rolled_back
"""

from __future__ import annotations

import json

TERMINAL_RUN = ("promoted", "failed", "unchanged")
TERMINAL_HALT = ("skipped", "aborted", "rolled_back", "failed", "unchanged", "stuck")
SENT = ("shadow_sent", "promote_sent", "model_sent", "abort_sent", "rollback_sent")

# (status waiting for an answer, command, ack status) -> new status
TRANSITIONS = {
    ("shadow_sent", "shadow", "shadowing"): "shadowing",
    ("shadow_sent", "shadow", "unchanged"): "unchanged",
    ("shadow_sent", "shadow", "refused"): "failed",
    ("shadow_sent", "shadow", "rolled_back"): "failed",
    ("promote_sent", "promote", "applied"): "promoted",
    ("promote_sent", "promote", "refused"): "failed",
    ("model_sent", "model", "applied"): "promoted",
    ("model_sent", "model", "unchanged"): "unchanged",
    ("model_sent", "model", "refused"): "failed",
    ("model_sent", "model", "rolled_back"): "failed",
    ("abort_sent", "abort", "aborted"): "aborted",
    ("abort_sent", "abort", "refused"): "abort_refused",
    ("rollback_sent", "model", "applied"): "rolled_back",
    ("rollback_sent", "model", "unchanged"): "rolled_back",
    ("rollback_sent", "model", "refused"): "stuck",
    ("rollback_sent", "model", "rolled_back"): "stuck",
}


async def event(conn, rollout_id: int, kind: str, detail: dict | None = None, device: str | None = None,
                actor: str = "controller") -> None:
    await conn.execute("INSERT INTO rollout_events (rollout_id, kind, device, actor, detail) VALUES ($1,$2,$3,$4,$5)",
                       rollout_id, kind, device, actor, json.dumps(detail or {}, default=str))


async def events_many(conn, rollout_id: int, kind: str, devices: list[str], details: list[dict]) -> None:
    if devices:
        await conn.execute("INSERT INTO rollout_events (rollout_id, kind, device, actor, detail) "
                           "SELECT $1, $2, d, 'controller', x::jsonb FROM unnest($3::text[], $4::text[]) AS u(d, x)",
                           rollout_id, kind, devices, [json.dumps(d, default=str) for d in details])


def _row(r) -> dict:
    d = dict(r)
    for k in ("bounds", "settings", "gate"):
        if isinstance(d.get(k), str):
            d[k] = json.loads(d[k])
    if d.get("stages") is not None:
        d["stages"] = [round(float(x), 6) for x in d["stages"]]
    return d


async def create(conn, ro: dict, targets: list[tuple[str, str, int]], actor: str) -> int:
    """A new rollout with its targets and a ``started`` event, in one transaction; its id."""
    async with conn.transaction():
        rid = await conn.fetchval(
            "INSERT INTO rollouts (task, bundle_sha256, model_sha256, release, version, base_bundle_sha256, "
            "base_model_sha256, base_release, stages, bounds, settings, started_by) "
            "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10::jsonb,$11::jsonb,$12) RETURNING id",
            ro["task"], ro["bundle_sha256"], ro["model_sha256"], ro["release"], ro["version"],
            ro["base_bundle_sha256"], ro["base_model_sha256"], ro["base_release"], ro["stages"],
            json.dumps(ro["bounds"]), json.dumps(ro["settings"]), actor)
        await conn.execute("INSERT INTO rollout_targets (rollout_id, device, site, stage) "
                           "SELECT $1, d, s, k FROM unnest($2::text[], $3::text[], $4::int[]) AS u(d, s, k)",
                           rid, [t[0] for t in targets], [t[1] for t in targets], [t[2] for t in targets])
        counts = [sum(1 for t in targets if t[2] <= k) for k in range(len(ro["stages"]))]
        await event(conn, rid, "started", {"task": ro["task"], "release": ro["release"], "version": ro["version"],
                                           "stages": ro["stages"], "poles_per_stage": counts,
                                           "bounds": ro["bounds"]}, actor=actor)
    return rid


async def get(conn, rollout_id: int) -> dict | None:
    r = await conn.fetchrow("SELECT * FROM rollouts WHERE id=$1", rollout_id)
    return _row(r) if r else None


async def listing(conn, limit: int = 50) -> list[dict]:
    rows = await conn.fetch("""
        SELECT r.id, r.task, r.version, r.release, r.stages, r.stage, r.phase, r.state, r.started_by, r.created_at,
               r.finished_at, r.gate, r.reason, count(t.*) AS poles,
               count(t.*) FILTER (WHERE t.status = 'promoted') AS promoted,
               count(t.*) FILTER (WHERE t.ever_ran) AS ever_ran
        FROM rollouts r LEFT JOIN rollout_targets t ON t.rollout_id = r.id
        GROUP BY r.id ORDER BY r.id DESC LIMIT $1""", limit)
    return [_row(r) for r in rows]


async def stage_counts(conn, rollout_id: int) -> list[dict]:
    rows = await conn.fetch("SELECT stage, status, count(*) AS n FROM rollout_targets WHERE rollout_id=$1 "
                            "GROUP BY stage, status ORDER BY stage, status", rollout_id)
    out: dict[int, dict] = {}
    for r in rows:
        out.setdefault(r["stage"], {})[r["status"]] = r["n"]
    return [{"stage": k, "statuses": v, "poles": sum(v.values())} for k, v in sorted(out.items())]


async def events(conn, rollout_id: int, limit: int = 500, kinds: list[str] | None = None) -> list[dict]:
    rows = await conn.fetch("SELECT id, at, kind, device, actor, detail FROM rollout_events WHERE rollout_id=$1 "
                            "AND ($3::text[] IS NULL OR kind = ANY($3)) ORDER BY id DESC LIMIT $2",
                            rollout_id, limit, kinds)
    return [{**dict(r), "detail": json.loads(r["detail"])} for r in rows]


async def request_abort(conn, rollout_id: int, actor: str) -> str:
    """Mark the rollout to be aborted by its controller; the state it was in."""
    async with conn.transaction():
        state = await conn.fetchval("SELECT state FROM rollouts WHERE id=$1 FOR UPDATE", rollout_id)
        if state is None:
            raise LookupError(f"rollout {rollout_id} not found")
        if state == "running":
            await conn.execute("UPDATE rollouts SET abort_requested_by=$2 WHERE id=$1 AND abort_requested_by IS NULL",
                               rollout_id, actor)
            await event(conn, rollout_id, "abort_requested", {}, actor=actor)
    return state


async def set_phase(conn, rollout_id: int, **cols) -> None:
    """Move the rollout (stage, phase, state, gate, reason, finished): one UPDATE, ``phase_at`` reset."""
    cols = {k: (json.dumps(v, default=str) if k == "gate" and v is not None else v) for k, v in cols.items()}
    sets = ", ".join(f"{k}=${i + 2}" + ("::jsonb" if k == "gate" else "") for i, k in enumerate(cols))
    finished = ", finished_at=clock_timestamp()" if cols.get("state") in ("completed", "halted", "aborted") else ""
    await conn.execute(f"UPDATE rollouts SET {sets}, phase_at=clock_timestamp(){finished} WHERE id=$1",
                       rollout_id, *cols.values())


async def targets(conn, rollout_id: int) -> list[dict]:
    """Every target with whether its pole can be reached now (``online``) and ``offline_after``: it went
    away after our last send and is still away, or it has reconnected since it switched to the candidate
    (a crash and restart after the update counts, even once it is back).

    Reachable: online, or heard from after its last offline state. A pole that reconnects in the same
    boot can have the will of its old connection stored after the birth of its new one (the broker
    publishes the will when it notices the old connection gone): the device row then says offline
    while the pole's heartbeats keep arriving. Those are what ``last_seen`` shows."""
    rows = await conn.fetch("""
        SELECT t.*, coalesce(d.online OR d.last_seen > d.offline_since + interval '1 second', false) AS online,
               d.offline_since, d.online_since, d.last_seen
        FROM rollout_targets t LEFT JOIN devices d ON d.device = t.device
        WHERE t.rollout_id=$1""", rollout_id)
    out = [dict(r) for r in rows]
    for t in out:
        away = not t["online"] and t["offline_since"] is not None and t["sent_at"] is not None \
            and t["offline_since"] > t["sent_at"]
        back = t["promoted_at"] is not None and t["online_since"] is not None and t["online_since"] > t["promoted_at"]
        t["offline_after"] = away or back
    return out


async def answers(conn, rollout_id: int) -> list[dict]:
    """Acks that answer a target's outstanding command."""
    rows = await conn.fetch("""
        SELECT t.device, t.status, a.cmd, a.status AS ack, a.reason, a.stage AS ack_stage
        FROM rollout_targets t JOIN command_acks a ON a.device = t.device AND a.cmd_id = t.cmd_id
        WHERE t.rollout_id=$1 AND t.status = ANY($2::text[])""", rollout_id, list(SENT))
    return [dict(r) for r in rows]


async def update_targets(conn, rollout_id: int, rows: list[dict]) -> None:
    """``[{device, status, detail?, cmd?, cmd_id?, sent?: bool, ran?: bool, back?: bool}]`` in one statement."""
    if not rows:
        return
    await conn.execute("""
        UPDATE rollout_targets t SET status=u.status, detail=coalesce(u.detail, t.detail),
            cmd=coalesce(u.cmd, t.cmd), cmd_id=coalesce(u.cmd_id, t.cmd_id),
            sent_at=CASE WHEN u.sent THEN clock_timestamp() ELSE t.sent_at END,
            sends=t.sends + u.sent::int, ever_ran=t.ever_ran OR u.ran,
            promoted_at=CASE WHEN u.ran THEN clock_timestamp() ELSE t.promoted_at END,
            back_at=CASE WHEN u.back THEN clock_timestamp() ELSE t.back_at END
        FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bool[], $8::bool[], $9::bool[])
             AS u(device, status, detail, cmd, cmd_id, sent, ran, back)
        WHERE t.rollout_id=$1 AND t.device=u.device""", rollout_id,
        [r["device"] for r in rows], [r["status"] for r in rows], [r.get("detail") for r in rows],
        [r.get("cmd") for r in rows], [r.get("cmd_id") for r in rows], [bool(r.get("sent")) for r in rows],
        [bool(r.get("ran")) for r in rows], [bool(r.get("back")) for r in rows])


async def reports(conn, cand16: str, devices: list[str], since) -> list[dict]:
    """Each device's latest shadow report (most windows) for the candidate, stored since ``since``."""
    rows = await conn.fetch("""
        SELECT DISTINCT ON (device) device, n, agr, cf, acf, p95_active, p95_cand, err, final
        FROM shadow_reports WHERE cand16=$1 AND device = ANY($2::text[]) AND ingested_at >= $3
        ORDER BY device, n DESC, final DESC""", cand16, devices, since)
    return [dict(r) for r in rows]


async def fleet_for(conn, task: str, like: str | None = None) -> list[tuple[str, str]]:
    """(device, site) of every pole that reported running ``task`` (whose id is ``LIKE like``)."""
    rows = await conn.fetch("SELECT device, site FROM devices WHERE models ? $1 "
                            "AND ($2::text IS NULL OR device LIKE $2) ORDER BY device", task, like)
    return [(r["device"], r["site"]) for r in rows]
