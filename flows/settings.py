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
    data_check_interval_s: float = Field(300, ge=1, description="seconds between data-trigger runs")
    canary_watch_interval_s: float = Field(60, ge=1, description="seconds between canary-watch runs")
    work_pool: str | None = Field(None, description="Prefect work pool for training (e.g. a GPU pool)")
    prefect_api_url: str | None = Field(
        None,
        description="serve against this Prefect API instead of starting a server (else Prefect's own PREFECT_API_URL)",
    )
    prefect_port: int = Field(4200, ge=1, le=65535, description="port of the Prefect server `flows serve` starts")
    prefect_start_timeout_s: float = Field(120, gt=0, description="how long the started server may take to answer")
    poll_s: float = Field(10, gt=0, description="how often `flows serve` asks the server for runs that are due")
    actor: str = "alignloop-flows"


@lru_cache
def get_settings() -> FlowsSettings:
    return FlowsSettings()
