"""Core settings: where the shared services live (env `ALIGNLOOP_<FIELD>`); built lazily, never at import."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path.home() / ".local" / "share" / "alignloop"


class CoreSettings(BaseSettings):
    """Where things are. What to do with them lives in each package's settings and YAML configs."""

    model_config = SettingsConfigDict(env_prefix="ALIGNLOOP_", extra="ignore")

    home: Path = Field(default_factory=_default_home, description="state: broker data, pids, SQLite store, artifacts")
    cache_dir: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "alignloop",
        description="downloaded jars and built models, kept across clones",
    )
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_controller_port: int = 9093
    kafka_version: str = "3.9.1"
    kafka_security_protocol: str = Field(
        default="SASL_PLAINTEXT", description="SASL_PLAINTEXT or SASL_SSL; PLAINTEXT only for a broker without auth"
    )
    kafka_sasl_mechanism: str = "SCRAM-SHA-512"
    kafka_username: str = "alignloop"
    kafka_password: SecretStr | None = Field(
        default=None, description="default: the secret `stack up` creates under <home>/secrets/kafka"
    )
    kafka_min_insync_replicas: int = Field(
        default=1, ge=1, description="`min.insync.replicas` of every topic we create (producers use acks=all)"
    )
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password: SecretStr | None = Field(
        default=None, description="put into `redis_url` when it names none; default: <home>/secrets/redis"
    )
    postgres_url: str = "postgresql+psycopg://alignloop@127.0.0.1:5433/alignloop"
    postgres_password: SecretStr | None = Field(
        default=None, description="put into `postgres_url` when it names none; default: <home>/secrets/postgres"
    )
    store_url: str | None = Field(default=None, description="SQLAlchemy URL; default: a SQLite file under home")
    feedback_token_key: SecretStr | None = Field(
        default=None,
        description="HMAC key serving signs feedback tokens with and curation verifies them with; "
        "default: a secret created once under <home>/secrets/feedback-token",
    )
    feedback_token_max_age_s: int = Field(
        default=7 * 24 * 3600, gt=0, description="a feedback token counts within this many seconds of its answer"
    )

    @model_validator(mode="after")
    def _credentials_into_urls(self) -> CoreSettings:
        # every client reads `redis_url`/`postgres_url`, so the password goes into the URL once, here;
        # a URL that already names a password (a managed service) is used as it is
        self.redis_url = self.with_redis_password(self.redis_url)
        self.postgres_url = self.with_store_password(self.postgres_url)
        if self.store_url:
            self.store_url = self.with_store_password(self.store_url)
        return self

    def with_redis_password(self, url: str) -> str:
        """`url` with the Redis password put in, unless it names one (or there is none)."""
        return _with_password(url, self.secret("redis", self.redis_password))

    def with_store_password(self, url: str) -> str:
        """A PostgreSQL `url` with the PostgreSQL password put in, unless it names one; other stores as given.

        Flows take URLs without passwords as run parameters (Prefect stores those) and put them back here."""
        if not url.startswith("postgresql"):
            return url
        return _with_password(url, self.secret("postgres", self.postgres_password))

    def secret(self, name: str, given: SecretStr | None = None) -> str | None:
        """`given` (from env), else the stack's secret file <home>/secrets/<name>, else None. Never creates one."""
        from alignloop.core.keys import read_secret

        if given is not None:
            return given.get_secret_value() or None
        return read_secret(self.home, name)

    def service_credentials_env(self) -> dict[str, str]:
        """The service passwords as `ALIGNLOOP_*_PASSWORD` variables, for a child process with another home."""
        out = {}
        for name, given in (
            ("kafka", self.kafka_password),
            ("redis", self.redis_password),
            ("postgres", self.postgres_password),
        ):
            value = self.secret(name, given)
            if value:
                out[f"ALIGNLOOP_{name.upper()}_PASSWORD"] = value
        return out

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
                raise AlignloopError(
                    f"`ALIGNLOOP_FEEDBACK_TOKEN_KEY` must be at least {MIN_KEY_BYTES} bytes; got {len(value.encode())}"
                )
            return value.encode()
        return load_or_create_secret(self.home, "feedback-token").encode()

    @property
    def kafka_port(self) -> int:
        return int(self.kafka_bootstrap.rsplit(":", 1)[1])


def without_password(url: str) -> str:
    """`url` with its password (if any) left out: for logs, and for what others store (Prefect parameters)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user, host = parts.username or "", parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}" if user else host))


def _with_password(url: str, password: str | None) -> str:
    parts = urlsplit(url)
    if not password or parts.password is not None:
        return url
    user, host = parts.username or "", parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))


@lru_cache
def get_settings() -> CoreSettings:
    return CoreSettings()
