"""Ingest settings (env `ALIGNLOOP_INGEST_<FIELD>`): topics, gateway address and limits; built lazily."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from ingest.topics import FEEDBACK_TOPIC


class IngestSettings(BaseSettings):
    """Where ingest listens and writes; Kafka and the store come from the core settings."""

    model_config = SettingsConfigDict(env_prefix="ALIGNLOOP_INGEST_", extra="ignore")

    topic: str = Field(FEEDBACK_TOPIC, description="feedback topic; `.rejected` and `.dlq` hang from it")
    partitions: int = Field(6, ge=1, description="partitions of topics created at start-up")
    host: str = "127.0.0.1"
    port: int = 8700
    max_batch: int = Field(1000, ge=1, le=1000, description="events per POST /v1/events")
    max_body_bytes: int = Field(16 * 1024 * 1024, description="a batch body; one event is at most 64 KiB")
    produce_timeout_s: float = Field(5.0, gt=0, description="wait for Kafka's ack before answering 503")
    retry_after_s: int = Field(5, ge=1, description="Retry-After on a 503")
    key_cache_s: float = Field(5.0, ge=0, description="how long a checked API key is trusted before re-reading it")
    source_key: SecretStr | None = Field(
        None,
        description="HMAC key of client.ip_hash (end users' addresses); "
        "default: the secret `ingest-source-key` kept under home",
    )
    linger_ms: int = Field(1, ge=0, description="gateway producer batching window (ms); batches fill on their own")


@lru_cache
def get_settings() -> IngestSettings:
    return IngestSettings()


def load_source_key(settings: IngestSettings, home: Path) -> bytes:
    """The HMAC key of client.ip_hash: from settings, else a random one created once under `home` (mode 0600)."""
    if settings.source_key is not None and settings.source_key.get_secret_value():
        return settings.source_key.get_secret_value().encode()
    from alignloop.core.keys import load_or_create_secret

    return load_or_create_secret(home, "ingest-source-key").encode()
