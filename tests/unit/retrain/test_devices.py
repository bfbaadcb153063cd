"""The run config's `training:` block resolved against a machine's capabilities (passed in, no GPU needed)."""

from __future__ import annotations

import re

import pytest

from retrain.config import TrainingSection, load_run_config, parse_config
from retrain.devices import Capabilities, resolve_training
from retrain.errors import ConfigError

CPU_ONLY = Capabilities()
AMPERE = Capabilities(cuda=True, cuda_bf16=True)
TURING = Capabilities(cuda=True, cuda_bf16=False)


@pytest.mark.parametrize(
    ("caps", "device", "precision"),
    [
        (CPU_ONLY, "cpu", "fp32"),
        (AMPERE, "cuda", "bf16"),
        (TURING, "cuda", "fp32"),
        (Capabilities(mps=True), "cpu", "fp32"),
    ],
)
def test_auto_takes_cuda_when_present_and_bf16_where_it_is_supported(caps, device, precision):
    plan = resolve_training(TrainingSection(), caps)
    assert (plan.device, plan.precision) == (device, precision)
    args = plan.trainer_args()
    assert args["use_cpu"] is (device == "cpu")
    assert args["bf16"] is (precision == "bf16") and args["fp16"] is False


def test_explicit_choices_are_kept_when_the_machine_can_do_them():
    section = TrainingSection(
        device="cuda", precision="fp16", gradient_checkpointing=True, gradient_accumulation_steps=4
    )
    args = resolve_training(section, TURING).trainer_args()
    assert (args["use_cpu"], args["fp16"], args["bf16"]) == (False, True, False)
    assert args["gradient_checkpointing"] is True and args["gradient_checkpointing_kwargs"] == {"use_reentrant": False}
    assert args["gradient_accumulation_steps"] == 4
    cpu = resolve_training(TrainingSection(device="cpu", precision="auto"), AMPERE)
    assert (cpu.device, cpu.precision) == ("cpu", "fp32")  # auto precision follows the device actually used
    assert resolve_training(TrainingSection(precision="bf16"), CPU_ONLY).precision == "bf16"  # CPU autocast


@pytest.mark.parametrize(
    ("section", "caps", "words"),
    [
        (TrainingSection(device="cuda"), CPU_ONLY, "`training.device` is cuda"),
        (TrainingSection(device="mps"), CPU_ONLY, "`training.device` is mps"),
        (TrainingSection(precision="bf16"), TURING, "`training.precision` is bf16"),
        (TrainingSection(precision="fp16"), CPU_ONLY, "`training.precision` fp16 needs a CUDA device"),
    ],
)
def test_what_the_machine_cannot_do_is_refused_with_the_field_named(section, caps, words):
    with pytest.raises(ConfigError, match=words):
        resolve_training(section, caps)


def test_the_shipped_config_hard_codes_no_device_and_bad_values_name_the_field():
    assert load_run_config().training == TrainingSection()
    with pytest.raises(ConfigError, match=re.escape("training.device")):
        parse_config({"training": {"device": "tpu"}})
    with pytest.raises(ConfigError, match=re.escape("training.gradient_accumulation_steps")):
        parse_config({"training": {"gradient_accumulation_steps": 0}})
