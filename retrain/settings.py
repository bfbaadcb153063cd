"""Retrain settings (env `ALIGNLOOP_RETRAIN_<FIELD>`): where models, adapters and reports go; built lazily."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RetrainSettings(BaseSettings):
    """Where things are and how many threads to use. What to train lives in `retrain/configs/*.yaml`."""

    model_config = SettingsConfigDict(env_prefix="ALIGNLOOP_RETRAIN_", extra="ignore")

    base_model: str | None = Field(
        default=None, description="a HF model dir or hub id; default: the embedded tiny model"
    )
    artifacts_dir: Path | None = Field(default=None, description="where adapters go; default: <home>/adapters")
    train_config: Path | None = Field(default=None, description="default run config; default: configs/dpo-tiny.yaml")
    gate_policy: Path | None = Field(default=None, description="default gate policy; default: configs/gates.yaml")
    num_threads: int = Field(default=0, ge=0, description="torch threads; 0 keeps torch's default")
    seed: int = 0

    def resolved_artifacts_dir(self) -> Path:
        from alignloop.core.settings import get_settings as core

        return self.artifacts_dir or core().home / "adapters"


@lru_cache
def get_settings() -> RetrainSettings:
    return RetrainSettings()


CONFIG_DIR = Path(__file__).parent / "configs"
