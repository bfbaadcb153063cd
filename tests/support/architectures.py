"""Tiny, randomly initialised causal LMs of several Hugging Face architectures, each with a tokenizer and the
chat template its family really uses, saved as a local model directory (nothing from a hub)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# the architecture's chat format (the shape of the real family's template) and the token that ends a turn
TEMPLATES: dict[str, tuple[str, str, list[str]]] = {
    "llama": (
        (
            "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>"
            "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
        ),
        "<|eot_id|>",
        ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    ),
    "qwen2": (
        (
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
        ),
        "<|im_end|>",
        ["<|im_start|>", "<|im_end|>"],
    ),
    "mistral": (
        (
            "{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
            "{% else %}{{ m['content'] }}</s>{% endif %}{% endfor %}"
        ),
        "</s>",
        ["</s>", "[INST]", "[/INST]"],
    ),
    "gpt_neox": (
        (
            "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|endoftext|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
        ),
        "<|endoftext|>",
        ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>"],
    ),
    "phi3": (
        (
            "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
        ),
        "<|end|>",
        ["<|end|>", "<|user|>", "<|assistant|>", "<|system|>"],
    ),
}
# two heads of 32: the smallest head size vLLM's CPU attention takes, so both serving backends run every one
HIDDEN, HEADS, KV_HEADS = 64, 2, 1


def _config(architecture: str, vocab: int, tok) -> Any:
    import transformers as tf

    ids = {"pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id, "bos_token_id": None}
    common = {
        "vocab_size": vocab,
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_hidden_layers": 2,
        "num_attention_heads": HEADS,
        "max_position_embeddings": 256,
        **ids,
    }
    if architecture == "llama":
        return tf.LlamaConfig(**common, num_key_value_heads=KV_HEADS, tie_word_embeddings=True)
    if architecture == "qwen2":
        return tf.Qwen2Config(**common, num_key_value_heads=KV_HEADS, tie_word_embeddings=True)
    if architecture == "mistral":
        return tf.MistralConfig(**common, num_key_value_heads=KV_HEADS, sliding_window=None)
    if architecture == "gpt_neox":
        return tf.GPTNeoXConfig(**common, rotary_pct=0.5, use_parallel_residual=True)
    if architecture == "phi3":
        return tf.Phi3Config(**common, num_key_value_heads=KV_HEADS)
    raise ValueError(f"no tiny builder for architecture {architecture!r}; known: {sorted(TEMPLATES)}")


def build_tiny_causal_lm(out_dir: str | Path, architecture: str, *, seed: int = 0, chat_template: bool = True) -> Path:
    """A random `<architecture>ForCausalLM` (tens of thousands of parameters) with a byte-level BPE tokenizer
    trained on the retrain corpus and the family's chat template (none: `chat_template=False`); saved with
    `save_pretrained`."""
    import torch
    from transformers import AutoModelForCausalLM

    from retrain.corpus import make_pairs
    from retrain.model import build_tokenizer

    template, eos, specials = TEMPLATES[architecture]
    rows = make_pairs(200, seed=seed)
    texts = [f"{r['prompt'][-1]['content']} {r['chosen'][-1]['content']} {r['rejected'][-1]['content']}" for r in rows]
    tok = build_tokenizer(texts)
    tok.add_special_tokens({"additional_special_tokens": [t for t in specials if t not in tok.get_vocab()]})
    tok.eos_token = eos
    tok.chat_template = template if chat_template else None
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(architecture, len(tok), tok))
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
