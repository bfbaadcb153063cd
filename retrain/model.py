"""The embedded default model: a tiny Llama with a locally trained BPE tokenizer, pretrained on the corpus, cached.

Any Hugging Face causal LM (a model directory or hub id) goes through `load_base`, the same `from_pretrained`
path; `lora_target_modules` picks what LoRA adapts on its architecture.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import TypedDict

from retrain.errors import RetrainError, UnsupportedModelError

RECIPE_VERSION = "tiny-llama-v1"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# for a base whose tokenizer has no template of its own: roles as markers, each turn ended by the EOS token
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]


# the shape and the pretraining recipe; a change here must bump RECIPE_VERSION
class _Recipe(TypedDict):
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int
    answers_per_prompt: int
    steps: int
    batch_size: int
    lr: float
    warmup: int


RECIPE: _Recipe = {
    "vocab_size": 1024,
    "hidden_size": 192,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 256,
    "answers_per_prompt": 12,
    "steps": 250,
    "batch_size": 32,
    "lr": 3e-3,
    "warmup": 50,
}


def model_dir_for(seed: int) -> Path:
    from alignloop.core.settings import get_settings

    return get_settings().cache_dir / "models" / f"{RECIPE_VERSION}-seed{seed}"


def _pretraining_texts(seed: int) -> list[tuple[str, str]]:
    """(prompt, answer) pairs: every request answered in both styles, half and half, several phrasings."""
    from retrain.corpus import PROMPTS, STYLES, make_answer

    rng = random.Random(seed)
    rows = []
    for p in PROMPTS:
        for k in range(RECIPE["answers_per_prompt"]):
            rows.append((p, make_answer(p, STYLES[k % 2], rng)))
    rng.shuffle(rows)
    return rows


def build_tokenizer(texts: list[str]):
    """A byte-level BPE tokenizer trained here with `tokenizers`, wrapped for transformers, with the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from retrain.corpus import UNSAFE_PLACEHOLDER

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=RECIPE["vocab_size"],
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts + [UNSAFE_PLACEHOLDER] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|end|>", bos_token=None, unk_token=None
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _encode_rows(tokenizer, rows: list[tuple[str, str]]):
    """Token ids and a loss mask that covers the answer and its end token only."""
    seqs = []
    for prompt, answer in rows:
        msgs = [{"role": "user", "content": prompt}]
        p_ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
        full = tokenizer.apply_chat_template(
            [*msgs, {"role": "assistant", "content": answer}], tokenize=True, return_dict=False
        )
        seqs.append((list(full), len(p_ids)))
    return seqs


def _pretrain(model, tokenizer, rows, seed: int, progress: bool) -> float:
    import torch

    torch.manual_seed(seed)
    seqs = _encode_rows(tokenizer, rows)
    steps, bs = RECIPE["steps"], RECIPE["batch_size"]
    opt = torch.optim.AdamW(model.parameters(), lr=RECIPE["lr"], weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / RECIPE["warmup"]) * max(0.05, 1 - s / steps)
    )
    rng = random.Random(seed)
    pad = tokenizer.pad_token_id
    model.train()
    loss_val = float("nan")
    bar = _progress(progress, "pretraining the tiny model", steps)
    with bar as prog:
        task = prog.add_task("pretrain", total=steps) if prog else None
        for _step in range(steps):
            batch = [seqs[rng.randrange(len(seqs))] for _ in range(bs)]
            width = max(len(s) for s, _ in batch)
            ids = torch.full((bs, width), pad, dtype=torch.long)
            labels = torch.full((bs, width), -100, dtype=torch.long)
            attn = torch.zeros((bs, width), dtype=torch.long)
            for i, (s, plen) in enumerate(batch):
                ids[i, : len(s)] = torch.tensor(s)
                labels[i, plen : len(s)] = torch.tensor(s[plen:])
                attn[i, : len(s)] = 1
            out = model(input_ids=ids, attention_mask=attn, labels=labels)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            loss_val = float(out.loss.detach())
            if prog:
                prog.update(task, advance=1, description=f"pretrain loss {loss_val:.3f}")
    model.eval()
    return loss_val


class _NoProgress:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _progress(enabled: bool, what: str, total: int):
    if not enabled:
        return _NoProgress()
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(), transient=True)


def build_base_model(out_dir: Path, *, seed: int = 0, progress: bool = True) -> dict:
    """Build, pretrain and save the tiny model into `out_dir` (which must not exist); returns build info."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    started = time.perf_counter()
    random.seed(seed)
    torch.manual_seed(seed)
    rows = _pretraining_texts(seed)
    tokenizer = build_tokenizer([f"{p} {a}" for p, a in rows[:2000]])
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=RECIPE["hidden_size"],
        intermediate_size=RECIPE["intermediate_size"],
        num_hidden_layers=RECIPE["num_hidden_layers"],
        num_attention_heads=RECIPE["num_attention_heads"],
        num_key_value_heads=RECIPE["num_key_value_heads"],
        max_position_embeddings=RECIPE["max_position_embeddings"],
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(cfg)
    final_loss = _pretrain(model, tokenizer, rows, seed, progress)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    info = {
        "recipe": RECIPE_VERSION,
        "seed": seed,
        "params": sum(p.numel() for p in model.parameters()),
        "final_loss": round(final_loss, 4),
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    (out_dir / "alignloop_model.json").write_text(json.dumps(info, indent=2))
    return info


def ensure_base_model(*, seed: int = 0, progress: bool = True) -> Path:
    """The cached tiny model for `seed`, built once (in a temp dir, then renamed) on first use."""
    import torch

    final = model_dir_for(seed)
    if (final / "alignloop_model.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        with torch.random.fork_rng():
            build_base_model(tmp, seed=seed, progress=progress)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "alignloop_model.json").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process won the race with the same build
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def resolve_base(base: str | Path | None) -> str:
    """A model path or hub id: the given one, the configured one, or the embedded tiny model."""
    if base:
        return str(base)
    from retrain.settings import get_settings

    return get_settings().base_model or str(ensure_base_model(seed=get_settings().seed))


def load_base(path_or_hub_id: str | Path):
    """(model, tokenizer) through `from_pretrained`, as for any Hugging Face causal LM; pad token, chat template set."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path_or_hub_id))
        model = AutoModelForCausalLM.from_pretrained(str(path_or_hub_id))
    except OSError as exc:
        raise RetrainError(
            f"`base_model` must be a model directory or hub id; got {str(path_or_hub_id)!r}: {str(exc).splitlines()[0]}"
        ) from exc
    except ValueError as exc:  # transformers: "Unrecognized configuration class ... for AutoModelForCausalLM"
        kind = _model_type(path_or_hub_id)
        raise UnsupportedModelError(
            f"`base_model` must be a causal LM; {str(path_or_hub_id)!r} is architecture "
            f"{kind!r}, which transformers cannot load as one: "
            f"{str(exc).splitlines()[0][:160]}"
        ) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    ensure_chat_template(tokenizer)
    model.eval()
    return model, tokenizer


def _model_type(path_or_hub_id: str | Path) -> str:
    config = Path(path_or_hub_id) / "config.json"
    try:
        return str(json.loads(config.read_text()).get("model_type"))
    except (OSError, ValueError):
        return "unknown"


def ensure_chat_template(tokenizer) -> None:
    """Keep the tokenizer's own chat template; a tokenizer without one gets alignloop's, ended by its EOS token."""
    if tokenizer.chat_template:
        return
    if tokenizer.eos_token is None:
        raise UnsupportedModelError(
            "the base model's tokenizer has neither a chat template nor an EOS token; "
            "add a `chat_template` to its tokenizer_config.json"
        )
    tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE


def lora_target_modules(model, configured: list[str] | None) -> list[str]:
    """The modules LoRA adapts on this model: the run config's for its architecture, else PEFT's default for it.

    Every name must match a linear layer of the model; the error names the architecture and the layers it has.
    """
    from peft.utils import constants

    kind = model.config.model_type
    modules = list(configured or constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(kind) or [])
    if not modules:
        raise UnsupportedModelError(
            f"architecture {kind!r} ({type(model).__name__}) has no default LoRA target modules in PEFT; set "
            f"`lora.target_modules` in the run config (for this base: {{{kind}: [...]}}), e.g. from its linear "
            f"layers {linear_layer_names(model)}"
        )
    missing = sorted(set(modules) - set(linear_layer_names(model)))
    if missing:
        raise UnsupportedModelError(
            f"`lora.target_modules` for architecture {kind!r} must name linear layers of the model; got {missing}, "
            f"which {type(model).__name__} does not have (its linear layers: {linear_layer_names(model)})"
        )
    return modules


def linear_layer_names(model) -> list[str]:
    """The distinct last names of the model's linear layers (what LoRA can adapt), without the output head."""
    import torch
    from transformers.pytorch_utils import Conv1D  # GPT-2's linear layers

    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Linear, Conv1D))
    }
    return sorted(names - {"lm_head", "embed_out"})


def hash_model_dir(path_or_hub_id: str | Path) -> str:
    """sha256 over the weight and config files of a local model dir; for a hub id, a hash of the id."""
    p = Path(path_or_hub_id)
    h = hashlib.sha256()
    if not p.is_dir():
        h.update(f"hub:{path_or_hub_id}".encode())
        return h.hexdigest()
    for f in sorted(p.iterdir()):
        if (
            f.is_file()
            and f.suffix in {".safetensors", ".json", ".bin", ".model", ".txt", ".jinja"}
            and f.name != "alignloop_model.json"
        ):  # build info (timings), not the model
            h.update(f.name.encode())
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()
