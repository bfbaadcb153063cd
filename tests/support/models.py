"""Builders for tests and benchmarks (the one tiny-model builder of the tests): a tiny random Llama with a local BPE
tokenizer, and LoRA artifacts from it."""

from __future__ import annotations

import hashlib
import json
import random
from datetime import UTC, datetime
from pathlib import Path

from alignloop.core.contracts import LINEAGE, MANIFEST, DatasetRef, Lineage, Manifest, file_digests

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_WORDS = (
    "order refund password account parcel late broken charge card plan address ship cancel help please "
    "thanks sorry today tomorrow check update reset link new bigger smaller support team email phone "
    "the a my your we will can you I is was not yet to for on in of and with"
).split()


def synthetic_sentences(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 12))).capitalize() + "." for _ in range(n)]


def build_tiny_base_model(out_dir: str | Path, *, seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    """A random LlamaForCausalLM (~100k params at the defaults) with a BPE tokenizer trained in a second."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    # word pieces only (no byte fallback), so whatever a random model samples decodes to readable text
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(
        synthetic_sentences(seed=seed),
        trainers.BpeTrainer(vocab_size=384, special_tokens=specials, show_progress=False),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # tied embeddings: zero rows give special tokens logit 0, so greedy text is words
        model.model.embed_tokens.weight[[fast.convert_tokens_to_ids(t) for t in specials]] = 0.0
    model.generation_config.pad_token_id = fast.pad_token_id
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


def base_model_hash(base_dir: str | Path) -> str:
    h = hashlib.sha256()
    for p in sorted(Path(base_dir).glob("*.safetensors")):
        h.update(p.read_bytes())
    return h.hexdigest()


class AdapterFactory:
    """Writes LoRA artifacts (PEFT save_pretrained + manifest + lineage) with distinct random weights per version."""

    def __init__(
        self,
        base_dir: str | Path,
        *,
        target_modules: tuple[str, ...] = ("q_proj", "v_proj"),
        r: int = 4,
        std: float = 0.3,
    ) -> None:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        self.base_dir = str(base_dir)
        self.base_hash = base_model_hash(base_dir)
        self.std = std
        model = AutoModelForCausalLM.from_pretrained(self.base_dir)
        cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(target_modules), lora_dropout=0.0)
        self.peft = get_peft_model(model, cfg)
        self._torch = torch

    def build(
        self, out_dir: str | Path, version: str, *, seed: int, parent: str | None = None, base_model: str | None = None
    ) -> Path:
        torch = self._torch
        out = Path(out_dir)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.peft.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * self.std)
        self.peft.save_pretrained(out)
        _write_lineage(out, version=version, parent=parent, seed=seed)
        write_manifest(
            out,
            version=version,
            base_model=base_model or self.base_dir,
            base_hash=self.base_hash,
            parent=parent,
            seed=seed,
        )
        return out


def _write_lineage(out: Path, *, version: str, parent: str | None, seed: int) -> None:
    event_ids = [f"00000000-0000-4000-8000-{seed:012d}"]
    (out / "event_ids.txt").write_text("\n".join(event_ids) + "\n")
    (out / LINEAGE).write_text(Lineage(version=version, parent_version=parent, event_ids=event_ids).to_json())


def write_manifest(
    out: Path, *, version: str, base_model: str, base_hash: str, parent: str | None, seed: int = 0
) -> Manifest:
    """The manifest retrain would write (the same contract model), over the files now in `out`."""
    manifest = Manifest(
        version=version,
        base_model=base_model,
        base_model_hash=base_hash,
        parent_version=parent,
        dataset=DatasetRef(
            hash=hashlib.sha256(f"ds{seed}".encode()).hexdigest(), pairs=3, unpaired=1, event_ids_file="event_ids.txt"
        ),
        config_hash=hashlib.sha256(b"tiny-lora").hexdigest(),
        metrics={"pref_accuracy": 0.5},
        libraries={"peft": "test"},
        created_at=datetime.now(UTC).isoformat(),
        files=file_digests(out),
    )
    (out / MANIFEST).write_text(manifest.to_json())
    return manifest


def write_fake_artifact(
    out_dir: str | Path, version: str, *, base_model: str = "tiny-base", parent: str | None = None, seed: int = 0
) -> Path:
    """A well-formed artifact without torch (random LoRA-shaped tensors); for registry tests that never serve it."""
    import numpy as np
    from safetensors.numpy import save

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    tensors = {
        f"{prefix}.lora_A.weight": rng.standard_normal((4, 8), np.float32),
        f"{prefix}.lora_B.weight": rng.standard_normal((8, 4), np.float32),
    }
    (out / "adapter_model.safetensors").write_bytes(save(tensors))
    (out / "adapter_config.json").write_text(
        json.dumps(
            {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "task_type": "CAUSAL_LM"}
        )
    )
    _write_lineage(out, version=version, parent=parent, seed=seed)
    write_manifest(out, version=version, base_model=base_model, base_hash="0" * 64, parent=parent, seed=seed)
    return out


PROMPT = [{"role": "user", "content": "Where is my order?"}]


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.01):
    """Poll until `predicate()` is truthy; returns its value or raises AssertionError with the last one seen."""
    import time

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s; last value {last!r}")
