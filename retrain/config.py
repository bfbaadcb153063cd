"""Run configs: the versioned YAML in `retrain/configs/` parsed into checked models (errors name the field)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from retrain.errors import ConfigError
from retrain.snapshot import SnapshotPolicy

DPO_LOSSES = {
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoraSection(_Strict):
    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | dict[str, list[str]] | None = Field(
        default=None,
        description="the modules LoRA adapts: a list for any base, or a list per architecture "
        "(the config's `model_type`: llama, qwen2, ...); an architecture not named gets PEFT's default for it",
    )

    def modules_for(self, model_type: str) -> list[str] | None:
        """The configured modules for this architecture; None: use PEFT's default for it."""
        if isinstance(self.target_modules, dict):
            return self.target_modules.get(model_type)
        return self.target_modules


class DpoSection(_Strict):
    beta: float = Field(default=0.1, gt=0.0)
    loss_type: list[str] = Field(default_factory=lambda: ["sigmoid", "sft"])
    loss_weights: list[float] | None = None
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=0.5, description="robust/exo: label flip rate")
    learning_rate: float = Field(default=5e-3, gt=0.0)
    epochs: float = Field(default=2.0, gt=0.0)
    batch_size: int = Field(default=8, ge=1)
    max_length: int = Field(default=160, ge=8)
    warmup_steps: int = Field(default=5, ge=0)
    precompute_ref_log_probs: bool = True
    cache_ref_log_probs: bool = Field(default=True, description="keep the base's log-probs on disk across runs")
    use_weights: bool = Field(default=True, description="each pair's curated weight scales its share of the loss")

    @model_validator(mode="after")
    def _check(self):
        bad = [t for t in self.loss_type if t not in DPO_LOSSES]
        if bad or not self.loss_type:
            raise ValueError(f"`dpo.loss_type` entries must be among {sorted(DPO_LOSSES)}; got {self.loss_type}")
        sorting = sorted({"aot", "aot_unpaired"}.intersection(self.loss_type))
        if sorting and self.use_weights:
            raise ValueError(
                f"`dpo.loss_type` {sorting} sorts pairs across the batch, so `dpo.use_weights` must be "
                f"false with it; got {self.loss_type} with use_weights true"
            )
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError(
                f"`dpo.loss_weights` must have one weight per loss type ({len(self.loss_type)}); "
                f"got {self.loss_weights}"
            )
        return self


class KtoSection(_Strict):
    enabled: bool = True
    beta: float = Field(default=0.1, gt=0.0)
    learning_rate: float = Field(default=2e-3, gt=0.0)
    epochs: float = Field(default=1.0, gt=0.0)
    batch_size: int = Field(default=8, ge=2, description="KTO's KL estimate needs at least 2 per batch")
    max_length: int = Field(default=160, ge=8)
    desirable_weight: float = Field(default=1.0, gt=0.0)
    undesirable_weight: float = Field(default=1.0, gt=0.0)
    min_examples: int = Field(default=8, ge=1, description="fewer unpaired examples than this: no KTO stage")
    use_weights: bool = Field(default=True, description="each example's curated weight scales its share of the loss")


class EvalSection(_Strict):
    preferred_style: Literal["courteous", "curt"] = "courteous"
    samples: int = Field(default=200, ge=1)
    max_new_tokens: int = Field(default=48, ge=1)
    temperature: float = Field(default=1.0, gt=0.0)
    kl_probes: int = Field(default=32, ge=1)
    trigger_phrases: list[str] = Field(
        default_factory=list,
        description="known trigger phrases, appended to every probe's prompts (the probes' `config` source)",
    )
    probes: list[str] = Field(
        default_factory=lambda: ["demo-marker"],
        description="safety probe files: names in retrain/configs/probes/ or paths (retrain/probes.py)",
    )
    seed: int = 0


class TrainingSection(_Strict):
    """Where and how training runs: device, precision and memory options (see `retrain.devices`)."""

    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        default="auto", description="auto: CUDA when present, else the CPU"
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto", description="auto: bf16 on a CUDA device that supports it, else fp32"
    )
    gradient_checkpointing: bool = Field(default=False, description="recompute activations: less memory, slower")
    gradient_accumulation_steps: int = Field(default=1, ge=1, description="optimizer step every this many batches")


class TurnSection(_Strict):
    """How a turn of the loop builds on what serves now (the active adapter, or the base)."""

    init: Literal["continue", "fresh"] = Field(
        default="continue",
        description="continue: train on from the active adapter's weights; fresh: a new LoRA "
        "on the base. With no active adapter both start fresh.",
    )
    replay_max: int = Field(
        default=400,
        ge=0,
        description="at most this many pairs (and as many unpaired examples) "
        "that the active adapter was trained on, the newest, join the new data",
    )


class RunConfig(_Strict):
    """One training run: what data, which adapter, which losses, how it is evaluated."""

    version: int = 1
    name: str = "dpo-tiny"
    seed: int = 0
    snapshot: SnapshotPolicy = Field(default_factory=SnapshotPolicy)
    lora: LoraSection = Field(default_factory=LoraSection)
    dpo: DpoSection = Field(default_factory=DpoSection)
    kto: KtoSection = Field(default_factory=KtoSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    turns: TurnSection = Field(default_factory=TurnSection)

    def as_dict(self) -> dict:
        return self.model_dump(mode="json")

    @property
    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()


def parse_config(data: dict | RunConfig | None, *, source: str = "config") -> RunConfig:
    if isinstance(data, RunConfig):
        return data
    try:
        return RunConfig.model_validate(data or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first["loc"]) or "(top)"
        raise ConfigError(f"{source}: `{loc}` {first['msg']}; got {first.get('input')!r}") from None


def load_yaml(path: Path | str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file must exist; got {str(path)!r}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping; got {type(data).__name__}")
    return data


def load_run_config(path: Path | str | None = None) -> RunConfig:
    """A run config from YAML; default: `ALIGNLOOP_RETRAIN_TRAIN_CONFIG` or `retrain/configs/dpo-tiny.yaml`."""
    from retrain.settings import CONFIG_DIR, get_settings

    path = Path(path or get_settings().train_config or CONFIG_DIR / "dpo-tiny.yaml")
    return parse_config(load_yaml(path), source=str(path))
