"""The console's settings: data with a schema, like every config in roadside."""

from __future__ import annotations

from pydantic import Field

from agent.schema import StrictModel


class ConsoleSettings(StrictModel):
    db_url: str = Field(description="PostgreSQL URL of the fleet database (postgresql://user@host:port/db)")
    nats_urls: list[str] = Field(default_factory=list, description="NATS servers (with the operations user), for "
                                 "the ingest backlog in /metrics; empty: /metrics reports from the database only")
    session_idle_s: int = Field(30 * 60, ge=60, le=7 * 86400,
                                description="a session unused this long expires (seconds)")
    session_max_s: int = Field(12 * 3600, ge=300, le=30 * 86400,
                               description="a session expires this long after login, used or not (seconds)")
    cookie_secure: bool = Field(False, description="send cookies only over HTTPS (set behind a TLS proxy)")
    online_after_s: int = Field(120, ge=5, le=86400,
                                description="/metrics and the fleet page call a device stale when not heard for this long")
    live_queue: int = Field(200, ge=2, le=10000,
                            description="batches of alerts buffered per live-feed client; a slower client loses the "
                            "oldest batches (counted)")
    pool_max: int = Field(8, ge=2, le=64, description="database connections the console keeps at most")
