"""The ingest worker's config file (production; the local stack passes the same through the environment).

Example: ``fleet/deploy/ingest.yaml``. Secrets are files, never values in the config. Every
section forbids unknown keys; errors name the dotted key, as the agent's config does.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from pydantic import Field

from agent.schema import StrictModel, load_yaml


class NatsSection(StrictModel):
    servers: list[str] = Field(min_length=1, description="nats:// or tls:// URLs of the cluster's client ports")
    user: str = Field(description="the operations user (all subjects)")
    password_file: Path = Field(description="file holding its password")
    ca_file: Path | None = Field(None, description="CA of the client port's TLS certificate (pinned)")


class DbSection(StrictModel):
    host: str = Field(description="PostgreSQL primary")
    port: int = Field(5432, ge=1, le=65535)
    database: str = "roadside"
    user: str = "roadside"
    password_file: Path = Field(description="file holding the password")
    sslmode: str = Field("verify-full", pattern=r"^(disable|require|verify-ca|verify-full)$")


class IngestSection(StrictModel):
    batch: int = Field(500, ge=1, le=10_000, description="messages per transaction, at most")
    gather_ms: int = Field(20, ge=0, le=1000, description="how long a batch waits for company after its first message")


class WorkerConfig(StrictModel):
    nats: NatsSection
    db: DbSection
    ingest: IngestSection = IngestSection()

    def db_url(self) -> str:
        pw = quote(self.db.password_file.read_text().strip(), safe="")
        return (f"postgresql://{quote(self.db.user)}:{pw}@{self.db.host}:{self.db.port}/{quote(self.db.database)}"
                f"?sslmode={self.db.sslmode}")


def load(path: Path | str) -> WorkerConfig:
    """The worker config in ``path``, or a ConfigError listing every wrong key with its line."""
    return load_yaml(path, WorkerConfig)
