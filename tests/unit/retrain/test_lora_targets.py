"""Any Hugging Face causal LM: LoRA targets per architecture, the tokenizer's own chat template, clear refusals."""

from __future__ import annotations

import json

import pytest

from retrain.config import parse_config
from retrain.errors import UnsupportedModelError
from retrain.model import (
    FALLBACK_CHAT_TEMPLATE,
    ensure_chat_template,
    load_base,
    lora_target_modules,
)
from support.architectures import TEMPLATES, build_tiny_causal_lm

MSGS = [{"role": "user", "content": "Where is my parcel?"}]


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("arch")
    return {a: build_tiny_causal_lm(root / a, a) for a in TEMPLATES}


@pytest.mark.parametrize(
    ("architecture", "modules"),
    [
        ("llama", ["q_proj", "v_proj"]),
        ("qwen2", ["q_proj", "v_proj"]),
        ("mistral", ["q_proj", "v_proj"]),
        ("gpt_neox", ["query_key_value"]),
    ],
)
def test_peft_defaults_per_architecture_and_the_tokenizers_own_template(bases, architecture, modules):
    model, tok = load_base(bases[architecture])
    assert model.config.model_type == architecture
    assert lora_target_modules(model, None) == modules
    assert tok.chat_template == TEMPLATES[architecture][0]
    ids = tok.apply_chat_template(MSGS, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert "Where is my parcel?" in tok.decode(ids)


def test_the_run_config_overrides_targets_per_architecture(bases):
    cfg = parse_config({"lora": {"target_modules": {"phi3": ["qkv_proj", "o_proj"], "llama": ["q_proj"]}}})
    phi3, _ = load_base(bases["phi3"])
    llama, _ = load_base(bases["llama"])
    qwen2, _ = load_base(bases["qwen2"])
    assert lora_target_modules(phi3, cfg.lora.modules_for("phi3")) == ["qkv_proj", "o_proj"]
    assert lora_target_modules(llama, cfg.lora.modules_for("llama")) == ["q_proj"]
    assert lora_target_modules(qwen2, cfg.lora.modules_for("qwen2")) == ["q_proj", "v_proj"]  # not named: PEFT's
    flat = parse_config({"lora": {"target_modules": ["q_proj", "k_proj"]}})
    assert flat.lora.modules_for("anything") == ["q_proj", "k_proj"]


def test_an_architecture_without_targets_or_with_wrong_ones_is_refused_by_name(bases):
    phi3, _ = load_base(bases["phi3"])
    with pytest.raises(
        UnsupportedModelError,
        match=r"architecture 'phi3' \(Phi3ForCausalLM\) has no default LoRA "
        r"target modules.*lora.target_modules.*qkv_proj",
    ):
        lora_target_modules(phi3, None)
    neox, _ = load_base(bases["gpt_neox"])
    with pytest.raises(UnsupportedModelError, match=r"architecture 'gpt_neox' .*got \['q_proj'\].*query_key_value"):
        lora_target_modules(neox, ["q_proj", "query_key_value"])


def test_a_model_that_is_not_a_causal_lm_is_refused_naming_its_architecture(tmp_path):
    from transformers import T5Config

    T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, vocab_size=64).save_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    build = build_tiny_causal_lm(tmp_path / "tok", "llama")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((build / name).read_bytes())
    with pytest.raises(UnsupportedModelError, match=r"must be a causal LM; .* is architecture 't5'"):
        load_base(tmp_path)


def test_a_tokenizer_without_a_template_gets_the_fallback_ended_by_its_eos(bases):
    _, tok = load_base(bases["qwen2"])
    tok.chat_template = None
    ensure_chat_template(tok)
    assert tok.chat_template == FALLBACK_CHAT_TEMPLATE
    text = tok.apply_chat_template([*MSGS, {"role": "assistant", "content": "Soon."}], tokenize=False)
    assert text == "<|user|>Where is my parcel?<|im_end|><|assistant|>Soon.<|im_end|>"
    own = TEMPLATES["llama"][0]
    tok.chat_template = own
    ensure_chat_template(tok)
    assert tok.chat_template == own


def test_serving_falls_back_to_the_template_retrain_trains_with():
    from deploy.runtime import FALLBACK_CHAT_TEMPLATE as SERVED

    assert SERVED == FALLBACK_CHAT_TEMPLATE  # deploy cannot import retrain: the two copies must not drift
