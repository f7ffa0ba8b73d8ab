"""An ingest worker: JetStream durable pull consumers -> PostgreSQL, ack after commit.

``python -m fleet.ingest --name w1`` (NATS URLs and the DB URL from ``ROADSIDE_NATS_URLS`` /
``ROADSIDE_DB_URL``: secrets stay out of the process list). Any number run side by side: they
share the durable consumers ``ingest`` (on ``$MQTT_msgs``) and ``ingest-health``, so each
message goes to one of them, and to another if it is not acked within ``ACK_WAIT_S``.

A batch (up to ``--batch`` messages, whatever is there now) is parsed (``fleet.records``),
written in one transaction (``fleet.writer``), the bad ones copied to the dead-letter subject,
and only then acked. A worker killed anywhere in between loses nothing: the batch is delivered
again and the unique keys store it once. When PostgreSQL is down the batch is not acked and
is retried (the consumer redelivers); the worker never exits on a bad message or a DB outage.
Counters are written to ``--stats`` (JSON) every second and at exit: received, batches, alerts,
summaries, health, states, shadow, acks (rows written), duplicates, ignored, db_errors, fetch_errors, dead
{reason: n}, lag {consumer: pending, ack_pending, redelivered} (every 5 s).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import signal
import time
from collections import Counter
from pathlib import Path

from . import records
from .streams import (DLQ_PREFIX, HEALTH_DURABLE, HEALTH_STREAM, INGEST_DURABLE, MSGS_STREAM)
from .writer import Batch, write

log = logging.getLogger("fleet.ingest")
GATHER_S = 0.02  # how long a batch may wait for company once its first message is in
UTC = dt.timezone.utc


class Worker:
    def __init__(self, name: str, nats_urls: list[str], db_url: str, batch: int = 500, stats: Path | None = None,
                 nats_options: dict | None = None, gather_s: float = GATHER_S):
        self.name, self.nats_urls, self.db_url, self.batch_size, self.stats_path = name, nats_urls, db_url, batch, stats
        self.nats_options, self.gather_s = nats_options or {}, gather_s
        self.counts: Counter = Counter()
        self.dead: Counter = Counter()
        self.lag: dict[str, dict] = {}
        self._stop = asyncio.Event()
        self._logged: dict[str, float] = {}

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        import asyncpg
        import nats

        from .db import ensure_partitions, migrate

        self.nc = await self._retry("NATS", lambda: nats.connect(
            servers=self.nats_urls, name=f"ingest-{self.name}", max_reconnect_attempts=-1, reconnect_time_wait=0.5,
            connect_timeout=5, **self.nats_options))
        if self.nc is None:
            return
        self.js = self.nc.jetstream(timeout=5)
        self.pool = await self._retry("PostgreSQL", lambda: asyncpg.create_pool(self.db_url, min_size=1, max_size=3))
        if self.pool is None:
            await self.nc.close()
            return

        async def setup():
            async with self.pool.acquire() as conn:
                await migrate(conn)
            return [await self.js.pull_subscribe_bind(INGEST_DURABLE, MSGS_STREAM),
                    await self.js.pull_subscribe_bind(HEALTH_DURABLE, HEALTH_STREAM)]
        subs = await self._retry("migrations and consumers", setup)
        if subs is None:
            await self.nc.close()
            await self.pool.close()
            return
        tasks = [asyncio.create_task(self._loop(s)) for s in subs]
        tasks.append(asyncio.create_task(self._housekeeping(ensure_partitions)))
        await self._stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._write_stats()
        await self.nc.close()
        await self.pool.close()

    async def _retry(self, what: str, make):
        """``await make()`` until it works or the worker is stopped: a worker started while a server
        restarts waits for it instead of exiting."""
        delay = 0.5
        while not self._stop.is_set():
            try:
                return await make()
            except Exception as e:  # connection refused, timeouts, a stream not yet there
                self._warn(f"start:{what}", f"{what} not ready ({type(e).__name__}: {e}); retrying")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        return None

    async def _housekeeping(self, ensure_partitions) -> None:
        last = time.monotonic()
        tick = 0
        while True:
            await asyncio.sleep(1.0)
            tick += 1
            if tick % 5 == 1:
                await self._lag()
            self._write_stats()
            if time.monotonic() - last > 3600:  # tomorrow's partitions exist before tomorrow
                try:
                    async with self.pool.acquire() as conn:
                        await ensure_partitions(conn)
                    last = time.monotonic()
                except Exception as e:  # the DB may be restarting: next hour, or the next second
                    log.warning("partitions: %s", e)

    async def _loop(self, sub) -> None:
        import nats.errors

        while True:
            try:
                # Wait (long poll) for one, then take whatever else arrives within GATHER_S: a fetch of
                # the whole batch would linger until the batch is full or the poll expires.
                msgs = await sub.fetch(1, timeout=1.0)
                if self.batch_size > 1:
                    try:
                        msgs += await sub.fetch(self.batch_size - 1, timeout=max(0.001, self.gather_s))
                    except (asyncio.TimeoutError, nats.errors.TimeoutError):
                        pass
            except (asyncio.TimeoutError, nats.errors.TimeoutError):
                continue
            except Exception as e:  # a node went away mid-request: the client reconnects
                self.counts["fetch_errors"] += 1
                self._warn("fetch", f"fetch failed: {type(e).__name__}: {e}")
                await asyncio.sleep(0.5)
                continue
            try:
                await self._handle(msgs)
            except Exception as e:  # a bug must not stop consumption silently: count, log, let them come back
                self.counts["handle_errors"] += 1
                log.exception("batch of %d failed unexpectedly (%s); not acked, will be redelivered", len(msgs), e)
                await asyncio.sleep(1.0)

    async def _lag(self) -> None:
        """Messages waiting in each durable consumer (the same for every worker: shared consumers)."""
        for stream, durable in ((MSGS_STREAM, INGEST_DURABLE), (HEALTH_STREAM, HEALTH_DURABLE)):
            try:
                info = await self.js.consumer_info(stream, durable)
            except Exception:  # a node restarting: next time
                continue
            self.lag[durable] = {"pending": info.num_pending, "ack_pending": info.num_ack_pending,
                                 "redelivered": info.num_redelivered}

    async def _handle(self, msgs) -> None:
        batch, keep = self._parse(msgs)
        t0 = time.monotonic()
        try:
            async with self.pool.acquire() as conn:
                w = await write(conn, batch)
        except Exception as e:  # DB down or restarting: no ack, the consumer delivers them again
            self.counts["db_errors"] += 1
            self._warn("db", f"batch of {len(msgs)} not stored ({type(e).__name__}: {e}); will be redelivered")
            for m in msgs:
                await _quietly(m.nak(delay=1.0))
            await asyncio.sleep(1.0)
            return
        for d in batch.dead:
            await self._dead_letter(d)
        for m in msgs:
            await _quietly(m.ack())
        self.counts["received"] += len(msgs)
        self.counts["batches"] += 1
        for k in ("alerts", "summaries", "health", "states", "shadow", "acks", "duplicates"):
            self.counts[k] += getattr(w, k)
        self.counts["ignored"] += keep
        self.counts["batch_ms_total"] += int((time.monotonic() - t0) * 1000)

    def _parse(self, msgs) -> tuple[Batch, int]:
        b, ignored = Batch(), 0
        now = dt.datetime.now(UTC)
        for m in msgs:
            meta = m.metadata
            at = meta.timestamp if meta.timestamp.tzinfo else meta.timestamp.replace(tzinfo=UTC)
            try:
                topic = records.parse_subject(m.subject)
                if topic.kind == "cmd" and not records.is_ack(topic):
                    ignored += 1  # the commands themselves (published by operations): nothing to store
                    continue
                b.saw(topic.device, topic.site, at)
                if topic.kind == "cmd":  # an answer: the rollout controller reads it from command_acks
                    b.acks.append({**records.ack_row(topic, m.data, now), "broker_at": at})
                    continue
                if topic.kind == "alert":
                    b.alerts.append({**records.alert_row(topic, m.data, now), "broker_at": at})
                elif topic.kind == "summary":
                    b.summaries.append({**records.summary_row(topic, m.data, now), "broker_at": at})
                elif topic.kind == "shadow":
                    b.shadow.append({**records.shadow_row(topic, m.data, now), "broker_at": at})
                elif topic.kind == "state":
                    b.states.append({**records.state_row(topic, m.data), "broker_at": at})
                else:
                    b.health.append({**records.health_row(topic, m.data, now), "broker_at": at})
            except records.Bad as e:
                self.dead[e.reason] += 1
                self._warn(f"dead:{e.reason}", f"dead letter ({m.subject}): {e}")
                b.dead.append({"subject": m.subject, "reason": e.reason, "detail": e.detail, "payload": bytes(m.data),
                               "stream": meta.stream, "stream_seq": meta.sequence.stream})
        return b, ignored

    async def _dead_letter(self, d: dict) -> None:
        headers = {"Roadside-Subject": d["subject"], "Roadside-Reason": d["reason"],
                   "Nats-Msg-Id": f"{d['stream']}:{d['stream_seq']}"}  # a redelivery is deduplicated
        try:
            await self.js.publish(DLQ_PREFIX + d["reason"], d["payload"], headers=headers)
        except Exception as e:  # the row is in the database already; the stream copy is a convenience
            self._warn("dlq", f"dead-letter subject publish failed: {type(e).__name__}: {e}")

    def _warn(self, key: str, message: str, every_s: float = 10.0) -> None:
        now = time.monotonic()
        if now - self._logged.get(key, -every_s) >= every_s:
            self._logged[key] = now
            log.warning("%s", message)

    def _write_stats(self) -> None:
        if self.stats_path is None:
            return
        doc = {"name": self.name, "pid": os.getpid(), "ts": time.time(), **self.counts, "dead": dict(self.dead), "lag": self.lag}
        tmp = self.stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.stats_path)


async def _quietly(coro) -> None:
    try:
        await coro
    except Exception:  # an ack into a dropped connection: the message comes back, the DB dedups it
        pass


def _from_config(args) -> Worker:
    import ssl

    from agent.schema import ConfigError

    from .config import load
    try:
        cfg = load(args.config)
        opts = {"user": cfg.nats.user, "password": cfg.nats.password_file.read_text().strip()}
        db_url = cfg.db_url()
    except (ConfigError, OSError) as e:
        raise SystemExit(str(e)) from None
    if cfg.nats.ca_file:
        opts["tls"] = ssl.create_default_context(cafile=str(cfg.nats.ca_file))
    return Worker(args.name, cfg.nats.servers, db_url, cfg.ingest.batch, args.stats, opts, cfg.ingest.gather_ms / 1000)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fleet.ingest", description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", default=f"w{os.getpid()}", help="worker name (logs, stats)")
    ap.add_argument("--batch", type=int, default=500, help="messages per transaction, at most")
    ap.add_argument("--stats", type=Path, help="JSON counters, rewritten every second")
    ap.add_argument("--config", type=Path, help="worker config (fleet/deploy/ingest.yaml; schema fleet/config.py); "
                    "without it: ROADSIDE_NATS_URLS and ROADSIDE_DB_URL from the environment (the local stack)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {args.name} %(levelname)s %(message)s")
    if args.batch < 1:
        ap.error(f"--batch {args.batch}: must be at least 1")
    if args.config:
        worker = _from_config(args)
    else:
        urls = [u for u in os.environ.get("ROADSIDE_NATS_URLS", "").split(",") if u]
        db = os.environ.get("ROADSIDE_DB_URL", "")
        if not urls or not db:
            ap.error("give --config, or set ROADSIDE_NATS_URLS (comma-separated nats:// URLs) and ROADSIDE_DB_URL")
        worker = Worker(args.name, urls, db, args.batch, args.stats)

    async def go():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        await worker.run()
    asyncio.run(go())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
