"""Flows settings (env `ALIGNLOOP_FLOWS_<FIELD>`): schedules, triggers, canary share and where configs live."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

_CONFIGS = Path(__file__).parent / "configs"


class FlowsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ALIGNLOOP_FLOWS_", extra="ignore")

    base_model: str | None = Field(None, description="HF model dir or id; default: the embedded tiny model")
    train_config: Path | None = Field(None, description="retrain YAML; default: retrain's dpo-tiny.yaml")
    gates: Path | None = Field(None, description="gate policy YAML; default: retrain's gates.yaml")
    canary_policy: Path = _CONFIGS / "canary.yaml"
    canary_share: float = Field(0.2, gt=0, le=1)
    retrain_cron: str = "0 3 * * *"
    min_new_pairs: int = Field(200, ge=1, description="data trigger: new curated pairs since the last snapshot")
    data_check_interval_s: int = Field(300, ge=5)
    canary_watch_interval_s: int = Field(60, ge=5)
    work_pool: str | None = Field(None, description="Prefect work pool for training (e.g. a GPU pool)")
    prefect_port: int = 4200
    actor: str = "alignloop-flows"


@lru_cache
def get_settings() -> FlowsSettings:
    return FlowsSettings()
