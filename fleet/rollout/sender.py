"""Commands to poles: MQTT QoS 1 publishes as the operations user, on the NATS MQTT listeners.

Why MQTT and not a NATS core publish on the mapped subject: a QoS 1 PUBLISH is stored in
``$MQTT_msgs`` before the PUBACK and NATS delivers it at QoS 1 to a pole's QoS 1 subscription (and
holds it for a pole with a persistent session that is away); a core publish carries no such
promise (not measured here). ``tests/test_fleet_rollout_sim.py`` (simulated poles with QoS 1
subscriptions) and ``test_fleet_rollout_agents.py`` (real agents) receive and answer what this
sends. A lost connection is remade on the next node; what was not PUBACKed is reported as not
sent (the controller resends after ``resend_s``).
"""

from __future__ import annotations

import asyncio
import logging
import os

from ..mqttlite import Client, MqttLiteError

log = logging.getLogger("fleet.rollout")


class Sender:
    def __init__(self, ports: list[int], user: str, password: str, host: str = "127.0.0.1", ssl_context=None):
        self.ports, self.user, self.password, self.host, self.ssl = ports, user, password, host, ssl_context
        self.client: Client | None = None
        self._next = 0

    async def _connected(self) -> Client:
        if self.client is not None and not self.client.closed.is_set():
            return self.client
        last: Exception | None = None
        for _ in range(len(self.ports)):
            port = self.ports[self._next % len(self.ports)]
            self._next += 1
            c = Client(self.host, port, f"roadside-rollout-{os.getpid()}", username=self.user,
                       password=self.password, keepalive=30, ssl_context=self.ssl)
            try:
                await c.connect()
                self.client = c
                return c
            except (OSError, asyncio.TimeoutError, MqttLiteError) as e:
                last = e
                c.abort()
        raise MqttLiteError(f"no MQTT listener accepted the rollout controller: {last}")

    async def send(self, items: list[tuple[str, bytes]], timeout: float = 10.0) -> int:
        """Publish ``[(topic, payload)]`` at QoS 1; how many were PUBACKed."""
        if not items:
            return 0
        try:
            c = await self._connected()
            futs = [c.publish(t, p, 1) for t, p in items]
            done = await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), timeout)
        except (OSError, asyncio.TimeoutError, MqttLiteError) as e:
            log.warning("sending %d commands failed (%s: %s); they are sent again later", len(items),
                        type(e).__name__, e)
            if self.client is not None:
                self.client.abort()
                self.client = None
            return 0
        return sum(1 for d in done if not isinstance(d, BaseException))

    async def close(self) -> None:
        if self.client is not None and not self.client.closed.is_set():
            try:
                await self.client.disconnect()
            except (asyncio.TimeoutError, MqttLiteError, OSError):
                self.client.abort()
        self.client = None
