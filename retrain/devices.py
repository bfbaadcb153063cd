"""Where training runs: the run config's `training:` block resolved against what this machine can do.

`resolve_training` is pure (the machine's capabilities are passed in); `probe_capabilities` is the edge that
asks torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from retrain.config import TrainingSection
from retrain.errors import ConfigError


@dataclass(frozen=True)
class Capabilities:
    """What the machine offers: a CUDA device (and whether it does bf16), Apple's MPS."""

    cuda: bool = False
    cuda_bf16: bool = False
    mps: bool = False


@dataclass(frozen=True)
class TrainingPlan:
    """The resolved device and precision, and the memory options, as they go into TRL's configs."""

    device: str
    precision: str
    gradient_checkpointing: bool
    gradient_accumulation_steps: int

    def trainer_args(self) -> dict[str, Any]:
        """The `transformers.TrainingArguments` fields this plan sets."""
        return {
            "use_cpu": self.device == "cpu",
            "bf16": self.precision == "bf16",
            "fp16": self.precision == "fp16",
            "gradient_checkpointing": self.gradient_checkpointing,
            # non-reentrant: works with a frozen base and LoRA inputs that need no grad
            "gradient_checkpointing_kwargs": {"use_reentrant": False} if self.gradient_checkpointing else None,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
        }


def _device(asked: str, caps: Capabilities) -> str:
    if asked == "auto":
        return "cuda" if caps.cuda else "cpu"
    if asked == "cuda" and not caps.cuda:
        raise ConfigError("`training.device` is cuda but this machine has no CUDA device; got 'cuda' (use auto or cpu)")
    if asked == "mps" and not caps.mps:
        raise ConfigError("`training.device` is mps but this machine has no MPS device; got 'mps' (use auto or cpu)")
    return asked


def _precision(asked: str, device: str, caps: Capabilities) -> str:
    if asked == "auto":
        return "bf16" if device == "cuda" and caps.cuda_bf16 else "fp32"
    if asked == "bf16" and device == "cuda" and not caps.cuda_bf16:
        raise ConfigError(
            "`training.precision` is bf16 but this CUDA device does not support bf16; got 'bf16' "
            "(use auto, fp16 or fp32)"
        )
    if asked == "fp16" and device != "cuda":
        raise ConfigError(f"`training.precision` fp16 needs a CUDA device; got 'fp16' on {device} (use auto or fp32)")
    return asked


def resolve_training(section: TrainingSection, caps: Capabilities) -> TrainingPlan:
    """The device and precision to train with: `auto` picks CUDA when present and bf16 where it is supported."""
    device = _device(section.device, caps)
    return TrainingPlan(
        device=device,
        precision=_precision(section.precision, device, caps),
        gradient_checkpointing=section.gradient_checkpointing,
        gradient_accumulation_steps=section.gradient_accumulation_steps,
    )


def probe_capabilities() -> Capabilities:
    """What torch sees on this machine."""
    import torch

    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return Capabilities(cuda=cuda, cuda_bf16=cuda and torch.cuda.is_bf16_supported(), mps=mps)
