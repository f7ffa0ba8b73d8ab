"""The live feed: PostgreSQL NOTIFY (0001's trigger on alerts) -> full rows -> every SSE client.

One listening connection per console process. Notifications are collected and, as soon as the
previous lookup is done, their rows are read in one primary-key query (the payload is small
by design; the row has sensor, metrics, model and acknowledgement) and handed to each
client's queue. A client that does not keep up loses its oldest batches, counted in
``roadside_console_live_dropped_total``: a slow browser never holds memory or the others back.
A lost listening connection is remade (1 s apart); what was stored meanwhile reaches the page
through the EventSource reconnect (``Last-Event-ID`` -> alerts stored since).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging

from . import queries

CHANNEL = "roadside_alerts"
log = logging.getLogger("roadside.console.live")


class LiveFeed:
    def __init__(self, db_url: str, pool, queue_batches: int, counters: dict):
        self.db_url, self.pool, self.queue_batches, self.counters = db_url, pool, queue_batches, counters
        self.clients: set[asyncio.Queue] = set()
        self._pending: list[tuple[str, str, dt.date]] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.listening = asyncio.Event()  # set while the LISTEN connection is up (tests wait on it)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._listen(), name="live-listen"),
                       asyncio.create_task(self._flush(), name="live-flush")]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def subscribe(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(self.queue_batches)
        self.clients.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self.clients.discard(q)

    def _on_notify(self, _conn, _pid, _channel, payload: str) -> None:
        try:
            n = json.loads(payload)
            self._pending.append((n["device"], n["id"], dt.date.fromisoformat(n["day"])))
        except (ValueError, KeyError, TypeError) as e:  # not ours or changed: counted, never fatal
            self.counters["live_bad_notify"] += 1
            log.warning("live feed: unusable notification %.80r (%s)", payload, e)
            return
        self._wake.set()

    async def _listen(self) -> None:
        import asyncpg

        while True:
            conn = None
            try:
                conn = await asyncpg.connect(self.db_url)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c: lost.set())
                await conn.add_listener(CHANNEL, self._on_notify)
                self.listening.set()
                await lost.wait()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the database restarting: try again, the page reconnects meanwhile
                log.warning("live feed: LISTEN connection failed (%s); retrying in 1 s", e)
            finally:
                self.listening.clear()
                if conn is not None and not conn.is_closed():
                    await conn.close()
            await asyncio.sleep(1.0)

    async def _flush(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            keys, self._pending = self._pending, []
            for i in range(0, len(keys), 500):
                try:
                    rows = await queries.alerts_by_key(self.pool, keys[i:i + 500])
                except Exception as e:  # the database restarting: these alerts reach pages on reconnect
                    log.warning("live feed: reading %d notified alerts failed: %s", len(keys[i:i + 500]), e)
                    continue
                if rows:
                    self.broadcast(rows)

    def broadcast(self, rows: list[dict]) -> None:
        self.counters["live_alerts"] += len(rows)
        for q in self.clients:
            if q.full():
                q.get_nowait()
                self.counters["live_dropped"] += 1
            q.put_nowait(rows)
