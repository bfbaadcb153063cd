"""Training: a LoRA adapter from a snapshot with TRL's DPOTrainer (pairs) and KTOTrainer (unpaired), as an artifact.

The reference is the base with the adapter disabled (no second copy). The base never changes, so its
log-probs for a pair are kept on disk (`RefLogpCache`): a later retrain over grown data pays only for the
policy on the pairs it has seen before.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alignloop.core import errors as contract_errors
from alignloop.core.contracts import (
    LINEAGE,
    MANIFEST,
    DatasetRef,
    Lineage,
    Manifest,
    TurnRecord,
    file_digests,
    load_artifact_dir,
    sha256_file,
)
from retrain.config import RunConfig, parse_config
from retrain.devices import TrainingPlan, probe_capabilities, resolve_training
from retrain.errors import ArtifactError, TrainError
from retrain.snapshot import Snapshot, to_trl_pairs, to_trl_unpaired
from retrain.weighting import WEIGHT, weighted


def new_version() -> str:
    return f"a-{datetime.now(UTC):%Y%m%d%H%M%S}-{uuid.uuid4().hex[:8]}"


def library_versions() -> dict[str, str]:
    import peft
    import torch
    import transformers
    import trl

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "peft": peft.__version__,
    }


class RefLogpCache:
    """Reference (base) log-probs per tokenized pair, in one JSON file per base model hash."""

    def __init__(self, path: Path):
        self.path = path
        self.values: dict[str, list[float]] = json.loads(path.read_text()) if path.is_file() else {}
        self.hits = 0
        self.misses = 0

    @staticmethod
    def for_base(base_hash: str, adapter_hash: str | None = None, precision: str = "fp32") -> RefLogpCache:
        """The cache of one reference: the base, or the base with the adapter a turn continues from.

        Log-probs computed under bf16/fp16 autocast differ from fp32 ones, so each precision has its own file.
        """
        from alignloop.core.settings import get_settings

        name = base_hash[:24] if adapter_hash is None else f"{base_hash[:24]}-{adapter_hash[:16]}"
        name += "" if precision == "fp32" else f"-{precision}"
        return RefLogpCache(get_settings().cache_dir / "ref_logps" / f"{name}.json")

    @staticmethod
    def key(prompt_ids, chosen_ids, rejected_ids, max_length) -> str:
        raw = json.dumps([list(prompt_ids), list(chosen_ids), list(rejected_ids), max_length])
        return hashlib.sha256(raw.encode()).hexdigest()[:32]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".ref-", dir=self.path.parent)
        with os.fdopen(fd, "w") as fh:
            json.dump(self.values, fh)
        os.replace(tmp, self.path)


def _dpo_trainer_class():
    from trl import DPOTrainer

    class CachedRefDPOTrainer(DPOTrainer):
        """DPOTrainer whose precomputed reference log-probs come from, and go to, a `RefLogpCache`."""

        ref_cache: RefLogpCache | None = None

        def _precompute_ref_logps(self, dataset, name, batch_size):
            cache = self.ref_cache
            if cache is None:
                return super()._precompute_ref_logps(dataset, name, batch_size)
            rows = list(zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"]))
            # a DPOConfig at run time; transformers' Trainer types `args` as the TrainingArguments base
            max_length = self.args.max_length  # type: ignore[attr-defined]
            keys = [RefLogpCache.key(p, c, r, max_length) for p, c, r in rows]
            # batched by length: a batch pads to its longest sequence, so similar lengths waste no compute
            missing = sorted(
                (i for i, k in enumerate(keys) if k not in cache.values),
                key=lambda i: len(rows[i][0]) + max(len(rows[i][1]), len(rows[i][2])),
            )
            cache.hits += len(keys) - len(missing)
            cache.misses += len(missing)
            if missing:
                done = super()._precompute_ref_logps(dataset.select(missing), name, batch_size)
                for i, c, r in zip(missing, done["ref_chosen_logps"], done["ref_rejected_logps"]):
                    cache.values[keys[i]] = [float(c), float(r)]
                cache.save()
            dataset = dataset.add_column("ref_chosen_logps", [cache.values[k][0] for k in keys])
            return dataset.add_column("ref_rejected_logps", [cache.values[k][1] for k in keys])

    return CachedRefDPOTrainer


def _common_args(cfg: RunConfig, workdir: Path, progress: bool, plan: TrainingPlan) -> dict:
    # device, precision and memory from the run config's `training:` block, never TRL's defaults (bf16 and
    # gradient checkpointing always on, which a CPU refuses or pays for)
    return dict(
        output_dir=str(workdir),
        **plan.trainer_args(),
        save_strategy="no",
        report_to=[],
        logging_steps=5,
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=0,
        disable_tqdm=not progress,
        lr_scheduler_type="linear",
    )


def _lora_config(cfg: RunConfig, model):
    """LoRA on the modules the run config names for the base's architecture, else PEFT's default for it."""
    from peft import LoraConfig

    from retrain.model import lora_target_modules

    modules = lora_target_modules(model, cfg.lora.modules_for(model.config.model_type))
    return LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=modules,
        task_type="CAUSAL_LM",
        bias="none",
    )


def _dataset(rows: list[dict], records: list[dict], use_weights: bool):
    """TRL's columns, plus each record's curated weight when the run weighs the loss by it."""
    from datasets import Dataset

    if use_weights:
        rows = [{**row, WEIGHT: float(r.get("weight", 1.0))} for row, r in zip(rows, records, strict=True)]
    return Dataset.from_list(rows)


def _summarize(log_history: list[dict], prefix: str) -> dict:
    out: dict = {}
    for entry in log_history:
        for k, v in entry.items():
            if isinstance(v, (int, float)) and k not in {"epoch", "step"}:
                out[f"{prefix}/{k}"] = round(float(v), 6)
    return out


def _continue_from(model, adapter_dir: Path, cfg: RunConfig):
    """The base with a trained adapter on it, trainable: a turn that builds on what serves now.

    TRL then keeps a frozen copy of it as the reference, so DPO measures change against the serving adapter.
    """
    from peft import PeftModel

    adapter_cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    if int(adapter_cfg.get("r", -1)) != cfg.lora.r:
        raise TrainError(
            f"`turns.init` is continue but the active adapter has LoRA r={adapter_cfg.get('r')} and "
            f"`lora.r` is {cfg.lora.r}; use `turns.init: fresh` to change the adapter's shape"
        )
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)


def run_training(
    base_model: str,
    snapshot: Snapshot,
    cfg: RunConfig,
    workdir: Path,
    *,
    progress: bool = True,
    init_adapter: Path | None = None,
):
    """Train in memory; returns (peft model, tokenizer, metrics). Nothing is written outside `workdir`.

    `init_adapter`: continue from that adapter's weights (and take it as DPO's reference) instead of a new LoRA.
    """
    import torch
    from transformers import set_seed
    from trl import KTOConfig, KTOTrainer

    from retrain.model import hash_model_dir, load_base
    from retrain.settings import get_settings

    if get_settings().num_threads:
        torch.set_num_threads(get_settings().num_threads)
    set_seed(cfg.seed)
    plan = resolve_training(cfg.training, probe_capabilities())
    model, tokenizer = load_base(base_model)
    metrics: dict = {
        "init": "continue" if init_adapter else "fresh",
        "device": plan.device,
        "precision": plan.precision,
    }
    if init_adapter is not None:
        model = _continue_from(model, Path(init_adapter), cfg)
    use_kto = cfg.kto.enabled and len(snapshot.train_unpaired) >= cfg.kto.min_examples
    if not snapshot.train_pairs and not use_kto:
        raise TrainError(
            f"the snapshot has nothing to train on: 0 pairs and {len(snapshot.train_unpaired)} "
            f"unpaired (KTO needs `kto.enabled` and at least {cfg.kto.min_examples})"
        )
    if snapshot.train_pairs:
        from trl import DPOConfig

        d = cfg.dpo
        args = DPOConfig(
            **_common_args(cfg, workdir / "dpo", progress, plan),
            learning_rate=d.learning_rate,
            num_train_epochs=d.epochs,
            per_device_train_batch_size=d.batch_size,
            warmup_steps=d.warmup_steps,
            beta=d.beta,
            loss_type=list(d.loss_type),
            loss_weights=list(d.loss_weights) if d.loss_weights else None,
            label_smoothing=d.label_smoothing,
            max_length=d.max_length,
            precompute_ref_log_probs=d.precompute_ref_log_probs,
            precompute_ref_batch_size=d.batch_size,
        )  # small batches: less padding, cache-friendly on CPU
        # TRL's trainers are untyped to mypy; this class also carries the reference cache
        trainer_cls: Any = weighted(_dpo_trainer_class()) if d.use_weights else _dpo_trainer_class()
        adapter_hash = sha256_file(Path(init_adapter) / "adapter_model.safetensors") if init_adapter else None
        cache = (
            RefLogpCache.for_base(hash_model_dir(base_model), adapter_hash, plan.precision)
            if (d.precompute_ref_log_probs and d.cache_ref_log_probs)
            else None
        )
        trainer_cls.ref_cache = cache
        started = time.perf_counter()
        try:
            data = _dataset(to_trl_pairs(snapshot.train_pairs), snapshot.train_pairs, d.use_weights)
            trainer = trainer_cls(
                model=model,
                args=args,
                train_dataset=data,
                processing_class=tokenizer,
                peft_config=None if init_adapter else _lora_config(cfg, model),
            )
        finally:
            trainer_cls.ref_cache = None
        prep_s = time.perf_counter() - started
        out = trainer.train()
        model = trainer.model
        _drop_reference_copy(model)  # KTO makes its own
        metrics.update(_summarize(trainer.state.log_history, "dpo"))
        runtime = out.metrics["train_runtime"]
        metrics.update(
            {
                "dpo/train_runtime_s": round(runtime, 2),
                "dpo/prepare_s": round(prep_s, 2),
                "dpo/pairs_per_s": round(len(snapshot.train_pairs) * d.epochs / runtime, 2),
            }
        )
        if cache is not None:
            metrics.update({"dpo/ref_cache_hits": cache.hits, "dpo/ref_cache_misses": cache.misses})
    if use_kto:
        k = cfg.kto
        kto_args = KTOConfig(
            **_common_args(cfg, workdir / "kto", progress, plan),
            learning_rate=k.learning_rate,
            num_train_epochs=k.epochs,
            per_device_train_batch_size=k.batch_size,
            beta=k.beta,
            desirable_weight=k.desirable_weight,
            undesirable_weight=k.undesirable_weight,
            max_length=k.max_length,
        )
        data = _dataset(to_trl_unpaired(snapshot.train_unpaired), snapshot.train_unpaired, k.use_weights)
        # after a DPO stage the model is already a PeftModel: KTO then keeps a frozen copy of the adapter only
        kwargs = {} if snapshot.train_pairs or init_adapter else {"peft_config": _lora_config(cfg, model)}
        kto_cls = weighted(KTOTrainer) if k.use_weights else KTOTrainer
        trainer = kto_cls(model=model, args=kto_args, train_dataset=data, processing_class=tokenizer, **kwargs)
        out = trainer.train()
        model = trainer.model
        metrics.update(_summarize(trainer.state.log_history, "kto"))
        metrics["kto/examples_per_s"] = round(len(snapshot.train_unpaired) * k.epochs / out.metrics["train_runtime"], 2)
        _drop_reference_copy(model)
    model.eval()
    return model, tokenizer, metrics


def _drop_reference_copy(model: Any) -> None:
    """TRL's frozen reference copy of the adapter (named "ref") is training state, not part of the artifact."""
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")


def write_artifact(
    model,
    staging: Path,
    *,
    base_model: str,
    snapshot: Snapshot,
    cfg: RunConfig,
    metrics: dict,
    parent_version: str | None,
    version: str,
    turn: TurnRecord | None = None,
) -> None:
    """The adapter, its lineage and its manifest into `staging` (not yet renamed into place)."""
    from retrain.model import hash_model_dir

    model.save_pretrained(str(staging), selected_adapters=["default"], safe_serialization=True)
    if not (staging / "adapter_model.safetensors").is_file():
        raise TrainError(f"PEFT did not write adapter_model.safetensors into {staging}")
    lineage = Lineage(
        version=version,
        parent_version=parent_version,
        snapshot_hash=snapshot.hash,
        turn=turn,
        event_ids=snapshot.train_event_ids,
    )
    (staging / LINEAGE).write_text(lineage.to_json())
    dataset = DatasetRef(
        hash=snapshot.hash,
        pairs=len(snapshot.train_pairs),
        unpaired=len(snapshot.train_unpaired),
        event_ids_file=LINEAGE,
        heldout_pairs=len(snapshot.heldout_pairs),
        safety_pairs=len(snapshot.safety_pairs),
        turn=turn,
    )
    manifest = Manifest(
        version=version,
        base_model=base_model,
        base_model_hash=hash_model_dir(base_model),
        parent_version=parent_version,
        dataset=dataset,
        config=cfg.as_dict(),
        config_hash=cfg.hash,
        metrics=metrics,
        libraries=library_versions(),
        created_at=datetime.now(UTC).isoformat(),
        files=file_digests(staging),
    )
    (staging / MANIFEST).write_text(manifest.to_json())


def train_adapter(
    base_model: Path | str | None,
    snapshot: Snapshot,
    config: RunConfig | dict | None,
    out_dir: Path | str,
    *,
    parent_version: str | None = None,
    progress: bool = True,
    init_adapter: Path | None = None,
    turn: TurnRecord | None = None,
) -> Path:
    """Train an adapter and write it as `<out_dir>/<version>/`; returns that path. A failure leaves nothing.

    `init_adapter`: continue from that (verified) adapter directory. `turn`: what the loop's turn trained on
    (parent, data window, new and replayed counts), recorded in the manifest and the lineage.
    """
    from retrain.model import resolve_base

    cfg = parse_config(config)
    base = resolve_base(base_model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    version = new_version()
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=out_dir))
    work = Path(tempfile.mkdtemp(prefix=".work-", dir=out_dir))
    try:
        model, _tok, metrics = run_training(base, snapshot, cfg, work, progress=progress, init_adapter=init_adapter)
        write_artifact(
            model,
            staging,
            base_model=base,
            snapshot=snapshot,
            cfg=cfg,
            metrics=metrics,
            parent_version=parent_version,
            version=version,
            turn=turn,
        )
        final = out_dir / version
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def load_verified_manifest(path: Path | str) -> Manifest:
    """The manifest of an adapter directory that passes the artifact contract
    (`alignloop.core.contracts.verify_artifact`, the same check deploy runs when it registers or loads one)."""
    try:
        return load_artifact_dir(path).manifest
    except contract_errors.ArtifactError as exc:
        raise ArtifactError(str(exc)) from exc


def load_adapter(base_model: str | Path, adapter_dir: Path | str):
    """(PeftModel, tokenizer): the base through `from_pretrained`, the adapter through plain PEFT."""
    from peft import PeftModel

    from retrain.model import load_base

    model, tok = load_base(base_model)
    model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    return model, tok
