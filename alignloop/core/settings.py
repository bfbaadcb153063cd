"""Core settings: where the shared services live (env `ALIGNLOOP_<FIELD>`); built lazily, never at import."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path.home() / ".local" / "share" / "alignloop"


class CoreSettings(BaseSettings):
    """Where things are. What to do with them lives in each package's settings and YAML configs."""

    model_config = SettingsConfigDict(env_prefix="ALIGNLOOP_", extra="ignore")

    home: Path = Field(default_factory=_default_home, description="state: broker data, pids, SQLite store, artifacts")
    cache_dir: Path = Field(default_factory=lambda: Path.home() / ".cache" / "alignloop",
                            description="downloaded jars and built models, kept across clones")
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_controller_port: int = 9093
    kafka_version: str = "3.9.1"
    redis_url: str = "redis://127.0.0.1:6379/0"
    postgres_url: str = "postgresql+psycopg://alignloop@127.0.0.1:5433/alignloop"
    store_url: str | None = Field(default=None, description="SQLAlchemy URL; default: a SQLite file under home")
    feedback_token_key: SecretStr | None = Field(
        default=None, description="HMAC key serving signs feedback tokens with and curation verifies them with; "
                                  "default: a secret created once under <home>/secrets/feedback-token")
    feedback_token_max_age_s: int = Field(default=7 * 24 * 3600, gt=0,
                                          description="a feedback token counts within this many seconds of its answer")

    @property
    def resolved_store_url(self) -> str:
        return self.store_url or f"sqlite:///{self.home / 'alignloop.db'}"

    def resolved_feedback_token_key(self) -> bytes:
        """The feedback token key: `ALIGNLOOP_FEEDBACK_TOKEN_KEY`, else the local secret (created on first use)."""
        from alignloop.core.errors import AlignloopError
        from alignloop.core.feedback_token import MIN_KEY_BYTES
        from alignloop.core.keys import load_or_create_secret

        if self.feedback_token_key is not None:
            value = self.feedback_token_key.get_secret_value()
            if len(value.encode()) < MIN_KEY_BYTES:
                raise AlignloopError(f"`ALIGNLOOP_FEEDBACK_TOKEN_KEY` must be at least {MIN_KEY_BYTES} bytes; "
                                     f"got {len(value.encode())}")
            return value.encode()
        return load_or_create_secret(self.home, "feedback-token").encode()

    @property
    def kafka_port(self) -> int:
        return int(self.kafka_bootstrap.rsplit(":", 1)[1])


@lru_cache
def get_settings() -> CoreSettings:
    return CoreSettings()
