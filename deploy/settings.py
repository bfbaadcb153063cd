"""Deploy settings (env `ALIGNLOOP_DEPLOY_<FIELD>`): where adapters live, what a replica serves; built lazily."""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class DeploySettings(BaseSettings):
    """Where the registry's artifacts live and how a serving replica behaves."""

    model_config = SettingsConfigDict(env_prefix="ALIGNLOOP_DEPLOY_", extra="ignore")

    artifact_root: Path | None = Field(default=None,
                                       description="registered adapter copies; default <home>/deploy/artifacts")
    store_url: str | None = Field(default=None, description="SQLAlchemy URL of the registry; default: the core store")
    redis_url: str | None = Field(default=None, description="Redis for the control channel; default: the core Redis")
    control_channel: str = Field(default="alignloop:deploy:routing",
                                 description="Redis pub/sub channel of routing changes")
    base_model: str | None = Field(default=None, description="the base model a replica serves (HF dir); routing key")
    admin_token_cache_s: float = Field(default=5.0, ge=0, description="how long a replica trusts its check of an "
                                       "admin token (named tokens live in the registry: `deploy tokens create`)")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    replica_id: str = Field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    reconcile_interval_s: float = Field(default=5.0, gt=0, description="a replica re-reads the registry this often")
    max_resident: int = Field(default=4, ge=2, description="adapters kept loaded (LRU); bounds memory and load time")
    max_tokens_limit: int = Field(default=256, ge=1, description="largest max_tokens a request may ask for")
    torch_threads: int = Field(default=0, ge=0,
                               description="torch intra-op threads per replica; 0 keeps torch's default")
    device: str = "cpu"

    def resolved_artifact_root(self) -> Path:
        from alignloop.settings import get_settings as core

        return (self.artifact_root or core().home / "deploy" / "artifacts").resolve()

    def resolved_store_url(self) -> str:
        from alignloop.settings import get_settings as core

        return self.store_url or core().resolved_store_url

    def resolved_redis_url(self) -> str:
        from alignloop.settings import get_settings as core

        return self.redis_url or core().redis_url


@lru_cache
def get_settings() -> DeploySettings:
    return DeploySettings()
