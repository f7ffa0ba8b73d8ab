"""The rollout controller: a loop over the database's state, one ``tick`` at a time.

Every tick reads the rollout and its targets, applies the poles' answers (``command_acks``,
stored by ingest), checks the gates and sends what the state asks for. Nothing lives only in
memory: a controller killed anywhere is resumed by another (``roadside fleet rollout run``)
that reads the same rows. A send is recorded (status ``*_sent``, the command id) before it is
published, so a crash between the two is a resend after ``resend_s``, never a lost step; the
command's bytes are the same every time (``messages``), so the pole answers a repeat from memory.
One controller per rollout: it holds a PostgreSQL advisory lock for as long as it runs (a
killed controller's connection closes and the lock goes with it).

Phases while ``running``, for stage k (poles of stages <= k are "in"):
``shadow`` (stage k's poles run the candidate beside the active model; gates checked when enough
have reported, or at ``stage_timeout_s``) -> ``promote`` -> ``soak`` (``soak_s``; install and
offline gates still checked) -> stage k+1's ``shadow`` ... -> ``catchup`` (poles that were away).
A pole that returns after its stage was decided gets the candidate as a plain update (``m``),
or ``promote`` if it was shadowing. On a breach or an abort: ``halting``/``aborting``; every
pole that got anything is aborted or rolled back to the baseline, poles never sent anything
are ``skipped`` (they stay on the old model), and the state ends ``halted``/``aborted`` once every
pole answered (a pole away meanwhile is handled when it returns).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time

from . import gates, store
from .messages import Builder

log = logging.getLogger("fleet.rollout")
UTC = dt.timezone.utc
RESEND_KIND = {"shadow_sent": "s", "promote_sent": "p", "model_sent": "m", "abort_sent": "a", "rollback_sent": "b"}
SENT_STATUS = {v: k for k, v in RESEND_KIND.items()}
DONE_STATES = ("completed", "halted", "aborted")


class Controller:
    def __init__(self, db_url: str, rollout_id: int, key, sender, bundle_url: str, progress=None):
        self.db_url, self.id, self.key, self.sender, self.bundle_url = db_url, rollout_id, key, sender, bundle_url
        self.progress = progress or (lambda line: None)
        self._last_line = ""

    # ------------------------------------------------------------------ the loop

    async def run(self, tick_s: float | None = None, max_s: float | None = None) -> dict:
        """Ticks until the rollout is completed, halted or aborted (or ``max_s``); the final row."""
        import asyncpg

        self.conn = await asyncpg.connect(self.db_url)
        try:
            if not await self.conn.fetchval("SELECT pg_try_advisory_lock(hashtext('roadside_rollout'), $1)", self.id):
                raise RuntimeError(f"rollout {self.id}: another controller holds it (advisory lock)")
            t_end = time.monotonic() + max_s if max_s else None
            while True:
                ro = await self.tick()
                if ro["state"] in DONE_STATES or (t_end and time.monotonic() > t_end):
                    return ro
                await asyncio.sleep(tick_s if tick_s is not None else ro["settings"].get("tick_s", 1.0))
        finally:
            await self.conn.close()

    async def tick(self) -> dict:
        ro = await store.get(self.conn, self.id)
        if ro is None:
            raise LookupError(f"rollout {self.id} not found")
        if ro["state"] in DONE_STATES:
            return ro
        self.builder = Builder(ro, self.key, self.bundle_url)
        await self._apply_answers(ro)
        ts = await store.targets(self.conn, self.id)
        if ro["state"] == "running":
            await self._running(ro, ts)
        else:
            await self._unwind(ro, ts)
        ro = await store.get(self.conn, self.id)
        self._show(ro, await store.targets(self.conn, self.id))
        return ro

    # ------------------------------------------------------------------ answers

    async def _apply_answers(self, ro: dict) -> None:
        rows, evs = [], {}
        for a in await store.answers(self.conn, self.id):
            new = store.TRANSITIONS.get((a["status"], a["cmd"], a["ack"]))
            if new is None:
                continue
            rows.append({"device": a["device"], "status": new, "detail": a["reason"], "ran": new == "promoted",
                         "back": new in ("aborted", "rolled_back")})
            evs.setdefault(new, []).append((a["device"], {"ack": a["ack"], "cmd": a["cmd"],
                                                          **({"reason": a["reason"]} if a["reason"] else {})}))
        if rows:
            async with self.conn.transaction():
                await store.update_targets(self.conn, self.id, rows)
                for kind, items in evs.items():
                    await store.events_many(self.conn, self.id, kind, [d for d, _ in items], [x for _, x in items])

    # ------------------------------------------------------------------ sending

    async def _send(self, ro: dict, ts: list[dict], kind: str) -> int:
        """Record, then publish, command ``kind`` to the targets ``ts`` (online ones only)."""
        ts = [t for t in ts if t["online"]]
        if not ts:
            return 0
        cmds = [(t, self.builder.build(kind, t["device"])) for t in ts]
        status = SENT_STATUS[kind]
        async with self.conn.transaction():
            await store.update_targets(self.conn, self.id, [
                {"device": t["device"], "status": status, "cmd": c.name, "cmd_id": c.cmd_id, "sent": True}
                for t, c in cmds])
            await store.events_many(self.conn, self.id, status, [t["device"] for t, _ in cmds],
                                    [{"cmd": c.name, "id": c.cmd_id, "resend": t["status"] == status} for t, c in cmds])
        sent = 0
        for i in range(0, len(cmds), 500):
            sent += await self.sender.send([(c.topic(t["site"]), c.payload) for t, c in cmds[i:i + 500]])
        return sent

    async def _resend_stale(self, ro: dict, ts: list[dict], statuses=tuple(RESEND_KIND)) -> None:
        """Commands not answered within ``resend_s`` go again (same id, same bytes) to poles online now."""
        cutoff = dt.datetime.now(UTC) - dt.timedelta(seconds=ro["settings"]["resend_s"])
        for status in statuses:
            kind = RESEND_KIND[status]
            stale = [t for t in ts if t["status"] == status and (t["sent_at"] is None or t["sent_at"] < cutoff)]
            await self._send(ro, stale, kind)

    # ------------------------------------------------------------------ running

    def _figures(self, ro: dict, ts: list[dict], reports: list[dict]) -> gates.StageFigures:
        k = ro["stage"]
        sent = [t for t in ts if t["status"] not in ("pending", "skipped", "unchanged")]
        reached = [t for t in ts if t["status"] in ("shadowing", "promote_sent", "promoted")]
        return gates.StageFigures(
            sent=len(sent), failed=sum(t["status"] == "failed" for t in sent), reached=len(reached),
            offline_after=sum(bool(t["offline_after"]) for t in reached),
            # expected reporters: stage k's reachable poles asked to shadow (answered or not yet)
            shadowing=sum(t["stage"] == k and t["online"] and t["status"] in ("shadow_sent", "shadowing") for t in ts),
            reports=[gates.PoleFigures(**r) for r in reports])

    async def _running(self, ro: dict, ts: list[dict]) -> None:
        if ro["abort_requested_by"]:
            return await self._halt(ro, ts, "aborting", None, f"aborted by {ro['abort_requested_by']}")
        bounds = gates.Bounds.from_dict(ro["bounds"])
        k, phase = ro["stage"], ro["phase"]
        stage_ts = [t for t in ts if t["stage"] == k and t["status"] == "shadowing"]
        reports = await store.reports(self.conn, ro["model_sha256"][:16], [t["device"] for t in stage_ts],
                                      ro["created_at"])
        fig = self._figures(ro, ts, reports)
        breach = gates.live_breaches(fig, bounds)
        if breach:
            return await self._halt(ro, ts, "halting", breach[0], breach[0].detail, fig)
        await self._resend_stale(ro, ts)
        await self._catch_up(ro, ts)
        age = (dt.datetime.now(UTC) - ro["phase_at"]).total_seconds()
        if phase == "shadow":
            await self._send(ro, [t for t in ts if t["stage"] == k and t["status"] == "pending"], "s")
            expired = age > ro["settings"]["stage_timeout_s"]
            if gates.ready(fig, bounds) or expired:
                await self._decide(ro, ts, fig, bounds, expired)
        elif phase == "promote":
            await self._send(ro, [t for t in stage_ts], "p")
            waiting = [t for t in ts if t["stage"] == k and t["online"]
                       and t["status"] in ("shadowing", "promote_sent")]
            if not waiting:
                await store.set_phase(self.conn, self.id, phase="soak")
        elif phase == "soak" and age >= ro["settings"]["soak_s"]:
            await self._next_stage(ro, ts)
        elif phase == "catchup":
            await self._maybe_complete(ro, ts, age)

    async def _decide(self, ro, ts, fig, bounds, expired) -> None:
        breach = gates.shadow_breaches(fig, bounds, expired)
        summary = gates.summarise(fig.reports, bounds.min_windows)
        if breach:
            return await self._halt(ro, ts, "halting", breach[0], breach[0].detail, fig)
        async with self.conn.transaction():
            await store.event(self.conn, self.id, "gate", {"stage": ro["stage"], "passed": True, "figures": summary,
                                                           "expired": expired})
            await store.set_phase(self.conn, self.id, phase="promote")

    async def _catch_up(self, ro: dict, ts: list[dict]) -> None:
        """Poles whose stage was decided while they were away: the candidate now (they passed by proxy)."""
        k, decided_now = ro["stage"], ro["phase"] in ("soak", "catchup")
        past = [t for t in ts if t["stage"] < k or (t["stage"] == k and decided_now)]
        await self._send(ro, [t for t in past if t["status"] == "shadowing"], "p")
        await self._send(ro, [t for t in past if t["status"] == "pending"], "m")

    async def _next_stage(self, ro: dict, ts: list[dict]) -> None:
        k = ro["stage"]
        async with self.conn.transaction():
            if k + 1 < len(ro["stages"]):
                await store.event(self.conn, self.id, "stage", {"stage": k + 1, "fraction": ro["stages"][k + 1]})
                await store.set_phase(self.conn, self.id, stage=k + 1, phase="shadow")
            else:
                await store.event(self.conn, self.id, "stage", {"stage": k, "phase": "catchup"})
                await store.set_phase(self.conn, self.id, phase="catchup")

    async def _maybe_complete(self, ro: dict, ts: list[dict], age: float) -> None:
        left = [t for t in ts if t["status"] not in store.TERMINAL_RUN]
        if left and age < ro["settings"]["catchup_s"]:
            return
        reason = (f"{len(left)} poles did not return within catchup_s; they keep the old model"
                  if left else "every pole runs the candidate")
        async with self.conn.transaction():
            await store.update_targets(self.conn, self.id, [{"device": t["device"], "status": "skipped"}
                                                            for t in left if t["status"] == "pending"])
            await store.event(self.conn, self.id, "completed", {"reason": reason, "left": len(left)})
            await store.set_phase(self.conn, self.id, state="completed", phase="done", reason=reason)

    # ------------------------------------------------------------------ halting

    async def _halt(self, ro, ts, state: str, breach, reason: str, fig=None) -> None:
        gate = None
        if breach is not None:
            bounds = gates.Bounds.from_dict(ro["bounds"])
            gate = {**breach.to_dict(), "stage": ro["stage"], "phase": ro["phase"],
                    "figures": gates.summarise(fig.reports, bounds.min_windows) if fig else None,
                    "counts": {"sent": fig.sent, "failed": fig.failed, "reached": fig.reached,
                               "offline_after": fig.offline_after} if fig else None}
        actor = ro["abort_requested_by"] if state == "aborting" else "controller"
        async with self.conn.transaction():
            await store.event(self.conn, self.id, "halted" if breach else "aborting",
                              {"reason": reason, "gate": gate}, actor=actor or "controller")
            await store.set_phase(self.conn, self.id, state=state, gate=gate, reason=reason)
        log.warning("rollout %d: %s (%s)", self.id, state, reason)

    async def _unwind(self, ro: dict, ts: list[dict]) -> None:
        await self._resend_stale(ro, ts, ("abort_sent", "rollback_sent"))
        pending = [t for t in ts if t["status"] == "pending"]
        if pending:
            await store.update_targets(self.conn, self.id, [{"device": t["device"], "status": "skipped"}
                                                            for t in pending])
        await self._send(ro, [t for t in ts if t["status"] in ("shadow_sent", "shadowing", "promote_sent")], "a")
        await self._send(ro, [t for t in ts if t["status"] in ("promoted", "model_sent", "abort_refused")], "b")
        ts = await store.targets(self.conn, self.id)
        if all(t["status"] in store.TERMINAL_HALT for t in ts):
            final = "aborted" if ro["state"] == "aborting" else "halted"
            async with self.conn.transaction():
                await store.event(self.conn, self.id, final, {"ever_ran": sum(t["ever_ran"] for t in ts),
                                                              "poles": len(ts)})
                await store.set_phase(self.conn, self.id, state=final, phase="done")

    # ------------------------------------------------------------------ progress

    def _show(self, ro: dict, ts: list[dict]) -> None:
        counts: dict[str, int] = {}
        for t in ts:
            counts[t["status"]] = counts.get(t["status"], 0) + 1
        pct = f"{ro['stages'][ro['stage']] * 100:g}%"
        line = (f"rollout {self.id} {ro['state']} stage {ro['stage'] + 1}/{len(ro['stages'])} ({pct}) {ro['phase']}: "
                + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        if line != self._last_line:
            self._last_line = line
            self.progress(line)
