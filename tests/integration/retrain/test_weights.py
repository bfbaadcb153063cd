"""Curated weights reach the loss (real TRL/PEFT on a tiny model): a pair of weight 0 has no effect, a weight of
2 counts as the pair twice, in DPO and in KTO."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from support.architectures import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("weights") / "base", "llama")


def _trainer(base, tmp_path, kind: str, rows: list[dict]):
    """A weighted TRL trainer on `rows` (each with a `weight`), its LoRA weights moved off their zero start."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

    from retrain.model import load_base
    from retrain.weighting import weighted

    torch.manual_seed(0)
    model, tok = load_base(base)
    common = {
        "output_dir": str(tmp_path / kind),
        "use_cpu": True,
        "report_to": [],
        "per_device_train_batch_size": 4,
        "max_length": 96,
        "save_strategy": "no",
        "disable_tqdm": True,
        "beta": 0.1,
    }
    if kind == "dpo":
        args, cls = DPOConfig(**common, loss_type=["sigmoid"], precompute_ref_log_probs=True), DPOTrainer
    else:
        args, cls = KTOConfig(**common, loss_type="apo_zero_unpaired", precompute_ref_log_probs=True), KTOTrainer
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = weighted(cls)(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok, peft_config=lora
    )
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape) * 0.1)
    trainer.model.train()
    return trainer


def _grads(trainer, examples: list[dict]) -> list:
    """The gradient of one batch's loss, through the trainer's own collator and loss."""
    trainer.model.zero_grad(set_to_none=True)
    batch = trainer.data_collator(examples)
    trainer.compute_loss(trainer.model, batch).backward()
    return [p.grad.detach().clone() for _, p in sorted(trainer.model.named_parameters()) if p.requires_grad]


def _same(a: list, b: list) -> bool:
    import torch

    return all(torch.allclose(x, y, rtol=1e-4, atol=1e-7) for x, y in zip(a, b, strict=True))


def _check_weights_act_like_counts(trainer) -> None:
    rows = [dict(trainer.train_dataset[i]) for i in range(3)]
    a, b, c = rows

    def w(row: dict, weight: float) -> dict:
        return {**row, "weight": weight}

    assert _same(_grads(trainer, [a, w(b, 0.0), c]), _grads(trainer, [a, c]))  # weight 0: as if absent
    assert _same(_grads(trainer, [a, w(b, 2.0)]), _grads(trainer, [a, b, b]))  # weight 2: as if twice
    assert _same(_grads(trainer, [w(a, 0.5), w(b, 0.5)]), _grads(trainer, [a, b]))  # only the ratios count
    assert not _same(_grads(trainer, [a, w(b, 2.0)]), _grads(trainer, [a, b]))  # and they do count


def test_dpo_pair_weights_act_like_pair_counts(base, tmp_path):
    from retrain.corpus import make_pairs
    from retrain.snapshot import to_trl_pairs

    rows = [{**r, "weight": 1.0} for r in to_trl_pairs(make_pairs(3, seed=11))]
    _check_weights_act_like_counts(_trainer(base, tmp_path, "dpo", rows))


def test_kto_example_weights_act_like_example_counts(base, tmp_path):
    from retrain.corpus import make_unpaired
    from retrain.snapshot import to_trl_unpaired

    records = make_unpaired(12, seed=5)
    chosen = [r for r in records if r["label"]][:2] + [r for r in records if not r["label"]][:1]
    rows = [{**r, "weight": 1.0} for r in to_trl_unpaired(chosen)]
    _check_weights_act_like_counts(_trainer(base, tmp_path, "kto", rows))


def test_training_reads_weights_from_the_snapshot_and_all_ones_change_nothing(base, tmp_path):
    """The same run with weights on and off: with every weight 1 the adapters are identical; with a skewed
    weight they are not (the weights reach the optimizer)."""
    from safetensors.torch import load_file

    from retrain.corpus import make_pairs
    from retrain.snapshot import build_snapshot
    from retrain.train import train_adapter

    cfg = {
        "snapshot": {"min_train_pairs": 4, "min_heldout_pairs": 0, "heldout_fraction": 0.0},
        "dpo": {"epochs": 1, "batch_size": 4, "max_length": 96, "cache_ref_log_probs": False, "loss_type": ["sigmoid"]},
        "kto": {"enabled": False},
    }
    pairs = make_pairs(8, seed=2)
    skewed = [{**p, "weight": 5.0 if i == 0 else 1.0} for i, p in enumerate(pairs)]

    def weights_of(records: list[dict], use: bool, name: str) -> dict:
        conf = {**cfg, "dpo": {**cfg["dpo"], "use_weights": use}}
        path = train_adapter(base, build_snapshot(records, [], conf["snapshot"]), conf, tmp_path / name, progress=False)
        return load_file(path / "adapter_model.safetensors")

    on, off, skew = weights_of(pairs, True, "on"), weights_of(pairs, False, "off"), weights_of(skewed, True, "skew")
    assert all((on[k] == off[k]).all() for k in on)
    assert any(not (on[k] == skew[k]).all() for k in on)
