"""The JetStream side of ingest: which streams hold what, and the durable consumers workers share.

- ``$MQTT_msgs`` (made by NATS' MQTT layer at the first MQTT connection, replicated
  ``mqtt.stream_replicas`` ways, interest retention): every QoS 1 PUBLISH from a pole (alerts,
  summaries, state, the will, command answers) as ``$MQTT.msgs.roadside.v1.<site>.<device>.<...>``.
  NATS stores a message here *before* it PUBACKs the pole, so consuming this stream is what
  makes "acknowledged by the broker" mean "will reach the database". (A separate stream
  capturing ``roadside.v1.>`` would get a copy without waiting for it: a leader killed between the
  PUBACK and that copy would lose an acknowledged alert.) The durable ``ingest`` consumer
  (filter ``$MQTT.msgs.roadside.v1.>``) keeps each message until a worker acks it after commit.
- ``ROADSIDE_HEALTH`` (``roadside.v1.*.*.health``, R3, an hour): the QoS 0 heartbeats, which
  never enter ``$MQTT_msgs``; consumer ``ingest-health``.
- ``ROADSIDE_DLQ`` (``roadside.dlq.<reason>``, R3, 30 days): the dead letters (headers carry the
  original subject and the reason; the database keeps them too).
"""

from __future__ import annotations

import asyncio

MSGS_STREAM = "$MQTT_msgs"
MSGS_PREFIX = "$MQTT.msgs."
MSGS_FILTER = MSGS_PREFIX + "roadside.v1.>"
HEALTH_STREAM = "ROADSIDE_HEALTH"
HEALTH_SUBJECT = "roadside.v1.*.*.health"
DLQ_STREAM = "ROADSIDE_DLQ"
DLQ_PREFIX = "roadside.dlq."
INGEST_DURABLE = "ingest"
HEALTH_DURABLE = "ingest-health"
ACK_WAIT_S = 10.0  # a worker that died holding a batch: its messages go to another after this


async def ensure_streams(js, replicas: int = 3, timeout: float = 30.0) -> None:
    """Health and dead-letter streams, and the two durable consumers (idempotent)."""
    from nats.js.api import ConsumerConfig, StreamConfig
    from nats.js.errors import NotFoundError

    for name, subjects, max_age in ((HEALTH_STREAM, [HEALTH_SUBJECT], 3600.0),
                                    (DLQ_STREAM, [DLQ_PREFIX + ">"], 30 * 86400.0)):
        cfg = StreamConfig(name=name, subjects=subjects, num_replicas=replicas, max_age=max_age)
        try:
            await js.stream_info(name)
            await js.update_stream(cfg)
        except NotFoundError:
            await js.add_stream(cfg)
    await wait_stream(js, MSGS_STREAM, timeout)
    for stream, durable, subject in ((MSGS_STREAM, INGEST_DURABLE, MSGS_FILTER),
                                     (HEALTH_STREAM, HEALTH_DURABLE, HEALTH_SUBJECT)):
        await js.add_consumer(stream, ConsumerConfig(
            durable_name=durable, filter_subject=subject, ack_policy="explicit", deliver_policy="all",
            ack_wait=ACK_WAIT_S, max_ack_pending=50_000, max_deliver=-1))


async def wait_stream(js, name: str, timeout: float):
    from nats.js.errors import NotFoundError

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await js.stream_info(name)
        except (NotFoundError, asyncio.TimeoutError) as e:
            if loop.time() > deadline:
                raise RuntimeError(f"stream {name} not there after {timeout} s ({type(e).__name__}); "
                                   f"it is made at the first MQTT connection") from None
            await asyncio.sleep(0.2)


async def stream_leader(js, name: str = MSGS_STREAM) -> str | None:
    info = await js.stream_info(name)
    return info.cluster.leader if info.cluster else None
